"""The three termination modes, each with a byte-exact echo and the peer certificate checked."""

from __future__ import annotations

import socket
from pathlib import Path

import burrow
from conftest import Echo, Pki, echo_exact, edge_addr, host, tls_client


def test_upstream_mode_passes_tls_through(edge: burrow.Edge, tmp_path: Path, pki: Pki, data: bytes) -> None:
    cert = pki.leaf("app.up.test")
    service = Echo(cert, tmp_path)
    listener = burrow.forward(f"127.0.0.1:{service.port}", proto="tls", domain="app.up.test", **edge.options())
    assert listener.terminate_at() == "upstream"
    with tls_client(edge_addr(listener), "app.up.test", pki.ca_pem) as conn:
        assert conn.getpeercert(binary_form=True) == cert.der(), "the upstream's own certificate"
        echo_exact(conn, data)


def test_agent_mode_with_crt_and_key(edge: burrow.Edge, pki: Pki, data: bytes) -> None:
    cert = pki.leaf("app.agent.test")
    service = Echo()
    # crt and key as str PEM text
    listener = burrow.forward(service.port, proto="tls", domain="app.agent.test", crt=cert.crt.decode(), key=cert.key.decode(),
                              terminate_at="agent", **edge.options())
    assert listener.terminate_at() == "agent"
    with tls_client(edge_addr(listener), "app.agent.test", pki.ca_pem) as conn:
        assert conn.getpeercert(binary_form=True) == cert.der()
        echo_exact(conn, data)


def test_edge_mode_with_cert_bytes(edge: burrow.Edge, tmp_path: Path, pki: Pki, data: bytes) -> None:
    cert = pki.leaf("app.edge.test")
    key_path = tmp_path / "key.pem"
    key_path.write_bytes(cert.key)
    service = Echo()
    # crt as bytearray (ngrok's type), key as a pathlib.Path (beyond ngrok)
    listener = burrow.forward(f"localhost:{service.port}", proto="tls", domain="app.edge.test",
                              crt=bytearray(cert.crt), key=key_path, **edge.options())
    assert listener.terminate_at() == "edge"
    with tls_client(edge_addr(listener), "app.edge.test", pki.ca_pem) as conn:
        assert conn.getpeercert(binary_form=True) == cert.der()
        echo_exact(conn, data)


def test_edge_mode_with_automatic_certificate(edge: burrow.Edge, data: bytes) -> None:
    service = Echo()
    listener = burrow.forward(f"tcp://127.0.0.1:{service.port}", proto="tls", terminate_at="edge", **edge.options())
    name = host(listener)
    assert name.endswith(".burrow.localhost")
    with tls_client(edge_addr(listener), name, edge.ca_pem.encode()) as conn:
        echo_exact(conn, data)


def test_tcp_endpoint(edge: burrow.Edge, data: bytes) -> None:
    service = Echo()
    listener = burrow.forward(service.port, proto="tcp", **edge.options())
    assert listener.url().startswith("tcp://127.0.0.1:")
    with socket.create_connection(edge_addr(listener), timeout=30) as conn:
        echo_exact(conn, data)
