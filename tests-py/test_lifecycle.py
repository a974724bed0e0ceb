"""Listener lifetime, module functions, builders, asyncio, mTLS, PROXY v2, policy, logs."""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import ssl
import struct
import threading
from pathlib import Path
from typing import List

import pytest

import burrow
from conftest import Echo, Pki, echo_exact, edge_addr, host, tls_client, write


def test_close_twice_and_context_manager(edge: burrow.Edge) -> None:
    service = Echo()
    listener = burrow.forward(service.port, terminate_at="edge", **edge.options())
    listener.close()
    listener.close()
    listener.join()  # returns at once: already closed
    with burrow.forward(service.port, terminate_at="edge", **edge.options()) as l2:
        assert l2 in burrow.get_listeners()
    assert l2 not in burrow.get_listeners()


def test_disconnect_one_url_keeps_the_others(edge: burrow.Edge) -> None:
    service = Echo()
    a = burrow.forward(service.port, domain="a.py.test", terminate_at="edge", **edge.options())
    b = burrow.forward(service.port, domain="b.py.test", terminate_at="edge", **edge.options())
    burrow.disconnect(a.url())
    with pytest.raises(ssl.SSLError):
        tls_client(edge_addr(a), "a.py.test", edge.ca_pem.encode()).close()
    with tls_client(edge_addr(b), "b.py.test", edge.ca_pem.encode()) as conn:
        echo_exact(conn, b"b still works")
    assert [x.url() for x in burrow.get_listeners()] == [b.url()]


def test_garbage_collection_does_not_close_a_listener(edge: burrow.Edge) -> None:
    """The rule: a listener runs until close()/disconnect()/kill(); the module keeps a
    reference, so dropping yours does not stop the forward."""
    service = Echo()
    url = burrow.forward(service.port, domain="gc.py.test", terminate_at="edge", **edge.options()).url()
    gc.collect()
    port = int(url.rsplit(":", 1)[1])
    with tls_client(("127.0.0.1", port), "gc.py.test", edge.ca_pem.encode()) as conn:
        echo_exact(conn, b"still here")
    assert [x.url() for x in burrow.get_listeners()] == [url]


def test_builders(edge: burrow.Edge, pki: Pki) -> None:
    cert = pki.leaf("built.py.test")
    service = Echo()
    session = burrow.SessionBuilder().server_addr(edge.tunnel_addr).root_cas(edge.ca_pem).connect()
    listener = (session.tls_endpoint().domain("built.py.test").agent_termination(cert.crt, cert.key)
                .metadata("m").listen_and_forward(f"127.0.0.1:{service.port}"))
    assert listener.metadata() == "m" and listener.terminate_at() == "agent"
    with tls_client(edge_addr(listener), "built.py.test", pki.ca_pem) as conn:
        echo_exact(conn, b"built")
    session.close()


def test_mutual_tls_at_the_edge(edge: burrow.Edge, tmp_path: Path, pki: Pki) -> None:
    clients = Pki("clients")
    service = Echo()
    listener = burrow.forward(service.port, domain="m.py.test", terminate_at="edge",
                              mutual_tls_cas=clients.ca_pem, **edge.options())
    ca = edge.ca_pem.encode()
    with tls_client(edge_addr(listener), "m.py.test", ca, clients.client("alice"), tmp_path) as conn:
        echo_exact(conn, b"with a certificate")
    refused = False
    try:
        with tls_client(edge_addr(listener), "m.py.test", ca) as conn:
            conn.sendall(b"x")
            refused = conn.recv(1) == b""
    except (ssl.SSLError, OSError):
        refused = True
    assert refused, "a client without a certificate is refused"


def test_proxy_proto_2_tells_the_upstream_the_client(edge: burrow.Edge) -> None:
    seen: List[bytes] = []
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            head = b""
            while len(head) < 16:
                head += conn.recv(16 - len(head))
            length = struct.unpack("!H", head[14:16])[0]
            body = b""
            while len(body) < length:
                body += conn.recv(length - len(body))
            seen.append(head + body)
            conn.sendall(b"ok")

    t = threading.Thread(target=serve)
    t.start()
    listener = burrow.forward(srv.getsockname()[1], domain="pp.py.test", terminate_at="edge",
                              proxy_proto="2", **edge.options())
    with tls_client(edge_addr(listener), "pp.py.test", edge.ca_pem.encode()) as conn:
        client_port = conn.getsockname()[1]
        conn.sendall(b"hi")
        assert conn.recv(2) == b"ok"
    t.join(10)
    srv.close()
    header = seen[0]
    assert header[:12] == b"\r\n\r\n\x00\r\nQUIT\n", "a PROXY v2 signature"
    src_ip, _dst_ip, src_port, _dst_port = struct.unpack("!4s4sHH", header[16:28])
    assert socket.inet_ntoa(src_ip) == "127.0.0.1" and src_port == client_port


def test_traffic_policy_terminate_tls(edge: burrow.Edge) -> None:
    service = Echo()
    policy = "on_tcp_connect:\n  - actions:\n      - type: terminate-tls\n        config: {min_version: '1.3'}\n"
    listener = burrow.forward(service.port, domain="pol.py.test", traffic_policy=policy, **edge.options())
    assert listener.terminate_at() == "edge"
    with tls_client(edge_addr(listener), "pol.py.test", edge.ca_pem.encode()) as conn:
        assert conn.version() == "TLSv1.3"
        echo_exact(conn, b"policy")


def test_coercions(edge: burrow.Edge) -> None:
    service = Echo()
    options = {"allow_cidr": "127.0.0.0/8", "metadata": None, "forwards.to": "svc"}
    listener = burrow.forward(service.port, terminate_at="edge", **options, **edge.options())  # type: ignore[arg-type]
    assert listener.forwards_to() == "svc"
    with tls_client(edge_addr(listener), host(listener), edge.ca_pem.encode()) as conn:
        echo_exact(conn, b"coerced")


def test_rust_logs_reach_python_logging(edge: burrow.Edge, caplog: pytest.LogCaptureFixture) -> None:
    burrow.log_level("INFO")
    service = Echo()
    with caplog.at_level(logging.INFO, logger="burrow"):
        listener = burrow.forward(service.port, terminate_at="edge", **edge.options())
        assert any("endpoint online" in r.getMessage() for r in caplog.records), caplog.records
    listener.close()
    burrow.log_level("OFF")


@pytest.mark.asyncio
async def test_fifty_concurrent_async_forwards(edge: burrow.Edge) -> None:
    service = Echo()
    listeners = await asyncio.gather(*[
        burrow.async_forward(service.port, domain=f"as{i}.py.test", terminate_at="edge", **edge.options())
        for i in range(50)
    ])
    assert len({x.url() for x in listeners}) == 50
    ctx = ssl.create_default_context(cadata=edge.ca_pem)

    async def talk(i: int) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.tls_port, ssl=ctx,
                                                       server_hostname=f"as{i}.py.test")
        msg = f"hello {i}".encode() * 100
        writer.write(msg)
        await writer.drain()
        got = await reader.readexactly(len(msg))
        writer.close()
        await writer.wait_closed()
        return got

    results = await asyncio.gather(*[talk(i) for i in range(50)])
    assert all(r == f"hello {i}".encode() * 100 for i, r in enumerate(results))


@pytest.mark.asyncio
async def test_forward_inside_a_loop_is_awaitable(edge: burrow.Edge) -> None:
    service = Echo()
    pending = burrow.forward(service.port, terminate_at="edge", **edge.options())
    assert asyncio.iscoroutine(pending)
    async with await pending as listener:
        assert listener.url().startswith("tls://")


def test_ctrl_c_interrupts_a_blocking_join(edge: burrow.Edge) -> None:
    import signal
    import subprocess
    import sys

    code = (
        "import burrow\n"
        f"l = burrow.forward(1, terminate_at='edge', server_addr={edge.tunnel_addr!r}, root_cas={edge.ca_pem!r})\n"
        "try:\n"
        "    print('ready', flush=True)\n"
        "    l.join()\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', flush=True)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    assert p.stdout.readline().strip() == "ready"
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=20)
    assert "interrupted" in out
