"""A session connected to several edges at once: server_addr as a list."""

from __future__ import annotations

import ssl
from pathlib import Path

import burrow
from conftest import Echo, Pki, echo_exact, tls_client, wait_until


def _answers(edge: burrow.Edge, name: str, ca: bytes) -> bool:
    try:
        with tls_client(("127.0.0.1", edge.tls_port), name, ca) as conn:
            echo_exact(conn, b"ping")
        return True
    except (OSError, ssl.SSLError, AssertionError):
        return False  # not bound at that edge yet: it refuses the unknown name


def test_server_addr_list_serves_the_url_through_every_edge(tmp_path: Path, pki: Pki, data: bytes) -> None:
    with burrow.Edge(open=True) as a, burrow.Edge(open=True) as b:
        cert = pki.leaf("app.multi.test")
        service = Echo(cert, tmp_path)
        listener = burrow.forward(f"127.0.0.1:{service.port}", proto="tls", domain="app.multi.test",
                                  server_addr=[a.tunnel_addr, b.tunnel_addr],
                                  root_cas=a.ca_pem + "\n" + b.ca_pem)
        assert listener.url() == f"tls://app.multi.test:{a.tls_port}", "the first edge's URL"
        for edge in (a, b):
            # The second edge binds the name just after forward() returns.
            wait_until(lambda: _answers(edge, "app.multi.test", pki.ca_pem), f"the name at {edge.tls_addr}")
            with tls_client(("127.0.0.1", edge.tls_port), "app.multi.test", pki.ca_pem) as conn:
                assert conn.getpeercert(binary_form=True) == cert.der(), "the upstream's own certificate"
                echo_exact(conn, data)
        listener.close()
