"""What a session shows of itself: Session.metrics_text() read by prometheus_client's
own parser, and Session.status() with ngrok's connection counters."""

from __future__ import annotations

import socket

import burrow
from conftest import Echo, echo_exact, wait_until
from prometheus_client.parser import text_string_to_metric_families


def sample(text: str, name: str, url: str) -> float:
    """The value of sample ``name`` labelled ``endpoint=url``."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels.get("endpoint") == url:
                return float(s.value)
    raise AssertionError(f"no sample {name} for {url}")


def test_metrics_and_status_count_real_connections(edge: burrow.Edge) -> None:
    service = Echo()
    session = burrow.SessionBuilder().server_addr(edge.tunnel_addr).ca_cert(edge.ca_pem.encode()).connect()
    listener = session.tcp_endpoint().listen_and_forward(f"tcp://127.0.0.1:{service.port}")
    url = listener.url()
    assert sample(session.metrics_text(), "burrow_agent_connections_total", url) == 0
    port = int(url.rsplit(":", 1)[1])
    for size in (10, 5000):
        with socket.create_connection(("127.0.0.1", port)) as conn:
            echo_exact(conn, b"x" * size)

    def settled() -> bool:
        ep = session.status()["endpoints"][0]
        return bool(ep["conns"]["count"] == 2 and ep["conns"]["gauge"] == 0)

    wait_until(settled, "both connections to end")
    text = session.metrics_text()
    assert sample(text, "burrow_agent_connections_total", url) == 2
    assert sample(text, "burrow_agent_bytes_in_total", url) == 5010
    assert sample(text, "burrow_agent_bytes_out_total", url) == 5010
    status = session.status()
    assert status["status"] == "online" and status["id"] == session.id()
    ep = status["endpoints"][0]
    assert ep["url"] == url and ep["proto"] == "tcp"
    assert ep["forwards_to"] == f"tcp://127.0.0.1:{service.port}"
    assert ep["conns"]["rate1"] > 0 and ep["conns"]["p50"] > 0
    assert [r["outcome"] for r in status["recent"]] == ["closed", "closed"]
    session.close()
    assert session.status()["status"] == "closed"
