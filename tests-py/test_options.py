"""Every option of API.md through forward(): mutual TLS, PROXY protocol, traffic policy,
CIDR rules, aliases, authtoken sources, sessions, tcp remote_addr, tls:// upstreams,
and ngrok's coercions (None dropped, dotted keys, scalar -> list)."""

from __future__ import annotations

import socket
import ssl
import struct
import threading
from pathlib import Path
from typing import List

import pytest

import burrow
from conftest import Echo, Pki, echo_exact, edge_addr, free_port, host, tls_client


def no_echo(conn: ssl.SSLSocket) -> bool:
    """True when the connection is closed instead of echoing."""
    try:
        conn.sendall(b"x")
        return conn.recv(1) == b""
    except (ssl.SSLError, OSError):
        return True


def test_mutual_tls_at_the_edge(edge: burrow.Edge, tmp_path: Path) -> None:
    clients, others = Pki("clients"), Pki("other clients")
    service = Echo()
    # a list of CA bundles is joined into one (scalar -> list works both ways)
    listener = burrow.forward(service.port, proto="tls", domain="m.py.test", terminate_at="edge",
                              mutual_tls_cas=[others.ca_pem, clients.ca_pem.decode()], **edge.options())
    ca = edge.ca_pem.encode()
    with tls_client(edge_addr(listener), "m.py.test", ca, clients.client("alice"), tmp_path) as conn:
        echo_exact(conn, b"with a certificate")
    refused = False
    try:
        with tls_client(edge_addr(listener), "m.py.test", ca) as conn:
            refused = no_echo(conn)
    except (ssl.SSLError, OSError):
        refused = True
    assert refused, "a client without a certificate is refused"


def test_proxy_proto_2_tells_the_upstream_the_client(edge: burrow.Edge) -> None:
    seen: List[bytes] = []
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(20)

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

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    listener = burrow.forward(srv.getsockname()[1], proto="tls", domain="pp.py.test", terminate_at="edge",
                              proxy_proto=2, **edge.options())  # an int, as ngrok users write it
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
    listener = burrow.forward(service.port, proto="tls", domain="pol.py.test", traffic_policy=policy, **edge.options())
    assert listener.terminate_at() == "edge"
    with tls_client(edge_addr(listener), "pol.py.test", edge.ca_pem.encode()) as conn:
        assert conn.version() == "TLSv1.3"
        echo_exact(conn, b"policy")
    # `policy` is ngrok's older name for the same option
    other = burrow.forward(service.port, proto="tls", domain="pol2.py.test", policy=policy, **edge.options())
    assert other.terminate_at() == "edge"


def test_coercions(edge: burrow.Edge) -> None:
    service = Echo()
    options = {"allow_cidr": "127.0.0.0/8", "metadata": None, "forwards.to": "svc", "remote_addr": None}
    listener = burrow.forward(service.port, proto="tls", terminate_at="edge", **options, **edge.options())  # type: ignore[arg-type]
    assert listener.forwards_to() == "svc" and listener.metadata() == ""
    with tls_client(edge_addr(listener), host(listener), edge.ca_pem.encode()) as conn:
        echo_exact(conn, b"coerced")


def test_cidr_rules_refuse_clients(edge: burrow.Edge) -> None:
    service = Echo()
    denied = burrow.forward(service.port, proto="tls", domain="deny.py.test", terminate_at="edge",
                            deny_cidr="127.0.0.1/32", **edge.options())
    not_allowed = burrow.forward(service.port, proto="tls", domain="allow.py.test", terminate_at="edge",
                                 allow_cidr=["10.0.0.0/8", "192.168.0.0/16"], **edge.options())
    for listener in (denied, not_allowed):
        try:
            with tls_client(edge_addr(listener), host(listener), edge.ca_pem.encode()) as conn:
                assert no_echo(conn), f"{listener.url()} must refuse 127.0.0.1"
        except (ssl.SSLError, OSError):
            pass  # refused before or during the handshake


def test_aliases_hostname_url_and_session_ca_cert(edge: burrow.Edge) -> None:
    service = Echo()
    a = burrow.forward(service.port, proto="tls", hostname="h.py.test", terminate_at="edge",
                       server_addr=edge.tunnel_addr, session_ca_cert=edge.ca_pem.encode())
    b = burrow.forward(service.port, url="tls://u.py.test", terminate_at="edge", **edge.options())
    assert host(a) == "h.py.test" and host(b) == "u.py.test"
    for listener in (a, b):
        with tls_client(edge_addr(listener), host(listener), edge.ca_pem.encode()) as conn:
            echo_exact(conn, b"alias")


def test_authtoken_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    service = Echo()
    with burrow.Edge(authtokens=[{"token": "right", "domains": ["*.tok.test"]}]) as edge:
        opts = dict(edge.options(), terminate_at="edge")
        monkeypatch.setenv("NGROK_AUTHTOKEN", "right")  # drop-in use with ngrok's variable
        a = burrow.forward(service.port, proto="tls", domain="a.tok.test", authtoken_from_env=True, **opts)
        monkeypatch.setenv("BURROW_AUTHTOKEN", "right")
        monkeypatch.setenv("NGROK_AUTHTOKEN", "wrong")  # BURROW_AUTHTOKEN wins
        b = burrow.forward(service.port, proto="tls", domain="b.tok.test", authtoken_from_env=True, **opts)
        monkeypatch.delenv("BURROW_AUTHTOKEN")
        monkeypatch.delenv("NGROK_AUTHTOKEN")
        with pytest.raises(burrow.AuthError):
            burrow.forward(service.port, proto="tls", domain="c.tok.test", **opts)
        burrow.set_auth_token("right")
        try:
            c = burrow.forward(service.port, proto="tls", domain="c.tok.test", **opts)
        finally:
            burrow.set_auth_token("")
        for listener in (a, b, c):
            with tls_client(edge_addr(listener), host(listener), edge.ca_pem.encode()) as conn:
                echo_exact(conn, b"token")


def test_one_session_unless_forced(edge: burrow.Edge) -> None:
    service = Echo()
    burrow.forward(service.port, proto="tls", terminate_at="edge", **edge.options())
    burrow.forward(service.port, proto="tls", terminate_at="edge", **edge.options())
    assert len(burrow._all_sessions) == 1
    forced = burrow.forward(service.port, proto="tls", terminate_at="edge", force_new_session=True,
                            session_metadata="second", **edge.options())
    assert len(burrow._all_sessions) == 2
    with tls_client(edge_addr(forced), host(forced), edge.ca_pem.encode()) as conn:
        echo_exact(conn, b"forced")
    # a shared session that closed is not reused: the next forward connects a new one
    burrow._all_sessions[0].close()
    fresh = burrow.forward(service.port, proto="tls", terminate_at="edge", **edge.options())
    assert len(burrow._all_sessions) == 3
    with tls_client(edge_addr(fresh), host(fresh), edge.ca_pem.encode()) as conn:
        echo_exact(conn, b"fresh")


def test_tcp_remote_addr() -> None:
    port = free_port()
    service = Echo()
    with burrow.Edge(tcp_ports=[port, port]) as edge:
        listener = burrow.forward(service.port, "tcp", remote_addr=f"127.0.0.1:{port}", **edge.options())
        assert listener.url() == f"tcp://127.0.0.1:{port}"
        with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
            echo_exact(conn, b"tcp on the port asked for")
    port = free_port()
    with burrow.Edge(tcp_ports=[port, port]) as edge:
        # ngrok's url form of the same request
        listener = burrow.forward(service.port, url=f"tcp://127.0.0.1:{port}", **edge.options())
        assert listener.proto() == "tcp" and listener.url() == f"tcp://127.0.0.1:{port}"
        with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
            echo_exact(conn, b"tcp url")


def test_tls_upstream_verification(edge: burrow.Edge, tmp_path: Path, pki: Pki) -> None:
    """addr "tls://..." makes the agent dial TLS: verified against upstream_root_cas, or
    not at all with verify_upstream_tls=False; an unknown CA fails the connection."""
    service = Echo(pki.leaf("localhost"), tmp_path)
    addr = f"tls://localhost:{service.port}"
    trusted = burrow.forward(addr, proto="tls", domain="t1.py.test", terminate_at="edge", upstream_root_cas=pki.ca_pem,
                             **edge.options())
    unverified = burrow.forward(addr, proto="tls", domain="t2.py.test", terminate_at="edge", verify_upstream_tls=False,
                                **edge.options())
    untrusted = burrow.forward(addr, proto="tls", domain="t3.py.test", terminate_at="edge", **edge.options())
    for listener in (trusted, unverified):
        with tls_client(edge_addr(listener), host(listener), edge.ca_pem.encode()) as conn:
            echo_exact(conn, b"over TLS to the upstream" * 1000)
    with tls_client(edge_addr(untrusted), host(untrusted), edge.ca_pem.encode()) as conn:
        assert no_echo(conn), "an upstream certificate from an unknown CA is refused"
