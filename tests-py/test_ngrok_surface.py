"""ngrok's session and listener surface, under ngrok's names: SessionBuilder hooks and
settings, edge commands, listen() then Listener.forward(), loop-aware close / disconnect /
get_listeners / kill, ngrok's error args, X.509 v1 certificates, the tunnel CA."""

from __future__ import annotations

import socket
import ssl
import subprocess
from pathlib import Path
from typing import List, Tuple

import pytest

import burrow
from conftest import Echo, Pki, echo_exact, tls_client, wait_until


def builder(edge: burrow.Edge) -> burrow.SessionBuilder:
    return burrow.SessionBuilder().server_addr(edge.tunnel_addr).ca_cert(edge.ca_pem.encode())


def test_client_info_reaches_the_edge(edge: burrow.Edge) -> None:
    session = builder(edge).client_info("my-app", "1.2", "beta").metadata("m1").connect()
    mine = [s for s in edge.sessions() if s["id"] == session.id()]
    assert len(mine) == 1
    assert mine[0]["client_info"][0] == "my-app/1.2 (beta)"
    assert mine[0]["client_info"][-1].startswith("burrow/")
    assert mine[0]["metadata"] == "m1"
    session.close()


def test_handle_heartbeat_gets_latency_in_milliseconds(edge: burrow.Edge) -> None:
    latencies: List[int] = []
    session = (builder(edge).heartbeat_interval(0.05).heartbeat_tolerance(5)
               .handle_heartbeat(latencies.append).connect())
    wait_until(lambda: len(latencies) >= 3, "three heartbeats")
    assert all(isinstance(ms, int) and ms >= 0 for ms in latencies)
    session.close()


def test_handle_disconnection_on_tunnel_loss_and_false_stops_reconnecting() -> None:
    calls: List[Tuple[str, str]] = []
    lost = burrow.Edge()
    session = (burrow.SessionBuilder().server_addr(lost.tunnel_addr).ca_cert(lost.ca_pem.encode())
               .handle_disconnection(lambda addr, error: calls.append((addr, error)) or False)
               .connect())
    lost.close()
    wait_until(lambda: len(calls) >= 1, "the disconnection hook")
    addr, error = calls[0]
    assert addr == lost.tunnel_addr and error
    wait_until(lambda: not session._native.is_open(), "the session closing")
    assert len(calls) == 1, "no reconnect after the hook said no"


def test_stop_restart_update_commands(edge: burrow.Edge) -> None:
    stops: List[bool] = []
    updates: List[Tuple[str, bool]] = []
    hooked = (builder(edge).handle_stop_command(lambda: stops.append(True))
              .handle_update_command(lambda version, permit: updates.append((version, permit)))
              .connect())
    edge.send_command(hooked.id(), "stop")
    assert stops == [True]
    assert hooked._native.is_open(), "the hook replaced the default close"
    edge.send_command(hooked.id(), "update", version="2.0.0", permit_major_version=True)
    assert updates == [("2.0.0", True)]

    plain = builder(edge).connect()
    with pytest.raises(burrow.Error) as e:
        edge.send_command(plain.id(), "update", version="2.0.0")
    assert e.value.code == "UNSUPPORTED"
    before = plain.id()
    edge.send_command(before, "restart")
    wait_until(lambda: plain.id() != before, "a reconnect after restart")
    edge.send_command(plain.id(), "stop")
    wait_until(lambda: not plain._native.is_open(), "the default stop closing the session")

    restarts: List[bool] = []
    refusing = builder(edge).handle_restart_command(lambda: restarts.append(True)).handle_stop_command(
        lambda: (_ for _ in ()).throw(RuntimeError("not now"))).connect()
    edge.send_command(refusing.id(), "restart")
    assert restarts == [True]
    with pytest.raises(burrow.Error) as e:
        edge.send_command(refusing.id(), "stop")
    assert "not now" in e.value.message


def test_listen_then_forward_and_the_listener_accessors(edge: burrow.Edge, pki: Pki) -> None:
    service = Echo()
    leaf = pki.leaf("later.py.test")
    session = builder(edge).connect()
    listener = (session.tls_endpoint().domain("later.py.test").termination(leaf.crt, leaf.key)
                .metadata("meta").listen())
    assert listener.forwards_to() == "" and listener.metadata() == "meta" and listener.id()
    assert listener in session.get_listeners()
    listener.forward(f"localhost:{service.port}")
    assert listener.forwards_to() == f"tcp://localhost:{service.port}"
    conn = tls_client(("127.0.0.1", edge.tls_port), "later.py.test", pki.ca_pem)
    echo_exact(conn, b"forwarded after listen" * 100)
    conn.close()
    session.close_listener(listener.id())
    assert listener not in session.get_listeners()
    assert burrow.get_listeners() == []
    tcp = session.tcp_endpoint().listen_and_forward(f"localhost:{service.port}")
    assert tcp.forwards_to() == f"tcp://localhost:{service.port}" and tcp.proto() == "tcp"


@pytest.mark.asyncio
async def test_close_disconnect_get_listeners_kill_are_awaitable_in_a_loop(edge: burrow.Edge) -> None:
    service = Echo()
    session = await builder(edge).connect()
    listener = await session.tcp_endpoint().listen()
    await listener.forward(f"localhost:{service.port}")
    await listener.close()
    assert listener not in session.get_listeners()
    other = await session.tcp_endpoint().listen_and_forward(f"localhost:{service.port}")
    await session.close_listener(other.id())
    assert session.get_listeners() == []
    one = await burrow.forward(service.port, "tcp", **edge.options())
    assert one in await burrow.get_listeners()
    await burrow.disconnect(one.url())
    assert one not in await burrow.get_listeners()
    await burrow.forward(service.port, "tcp", **edge.options())
    await burrow.kill()
    assert await burrow.get_listeners() == []
    await session.close()
    assert not session._native.is_open()


def test_the_same_calls_are_plain_outside_a_loop(edge: burrow.Edge) -> None:
    service = Echo()
    one = burrow.forward(service.port, "tcp", **edge.options())
    assert burrow.get_listeners() == [one]
    assert burrow.disconnect(one.url()) is None
    assert burrow.get_listeners() == []
    assert burrow.kill() is None
    session = builder(edge).connect()
    listener = session.tcp_endpoint().listen()
    assert listener.forward(f"localhost:{service.port}") is None
    assert listener.close() is None
    assert session.close() is None


def test_error_args_are_ngroks(edge: burrow.Edge) -> None:
    with burrow.Edge(authtokens=[{"token": "right", "domains": ["*.ok.test"]}]) as strict:
        with pytest.raises(burrow.AuthError) as e:
            burrow.SessionBuilder().server_addr(strict.tunnel_addr).ca_cert(
                strict.ca_pem.encode()).authtoken("wrong").connect()
    message, cause, code = e.value.args
    assert code == "ERR_NGROK_105" and e.value.code == "AUTH_FAILED"
    assert message == e.value.message and cause and str(e.value) == message


def openssl_v1_cert(tmp: Path, cn: str) -> Tuple[bytes, bytes]:
    """A self-signed X.509 v1 certificate, as ``openssl x509 -req`` makes without extensions."""
    run = lambda *args: subprocess.run(["openssl", *args], cwd=tmp, check=True, capture_output=True)
    run("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", "key.pem", "-subj", f"/CN={cn}",
        "-out", "csr.pem")
    run("x509", "-req", "-in", "csr.pem", "-signkey", "key.pem", "-days", "2", "-out", "crt.pem")
    text = run("x509", "-in", "crt.pem", "-noout", "-text").stdout.decode()
    assert "Version: 1 (0x0)" in text
    return (tmp / "crt.pem").read_bytes(), (tmp / "key.pem").read_bytes()


@pytest.mark.parametrize("terminate_at", ["edge", "agent"])
def test_x509_v1_self_signed_certificates(edge: burrow.Edge, tmp_path: Path, terminate_at: str) -> None:
    name = f"v1{terminate_at}.py.test"
    crt, key = openssl_v1_cert(tmp_path, name)
    service = Echo()
    burrow.forward(service.port, proto="tls", domain=name, crt=crt, key=key, terminate_at=terminate_at,
                   **edge.options())
    ctx = ssl.create_default_context(cadata=crt.decode())
    ctx.hostname_checks_common_name = True  # a v1 certificate has no SAN: its CN is its name
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", edge.tls_port), timeout=30),
                         server_hostname=name) as conn:
        echo_exact(conn, b"v1" * 5000)


def test_ca_cert_with_the_embedded_edge_is_applied_and_a_bad_one_names_tls() -> None:
    with pytest.raises(burrow.ConnectionError) as e:
        burrow.SessionBuilder().ca_cert(Pki().ca_pem).connect()
    assert e.value.code == "CONNECT_FAILED" and "TLS" in e.value.message
    with pytest.raises(burrow.CertificateError) as e:
        burrow.SessionBuilder().ca_cert(bytearray(b"not a certificate")).connect()
    assert "TLS" in e.value.message
