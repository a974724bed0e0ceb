"""log_level(): Rust `tracing` events reach Python `logging`; secrets never do."""

from __future__ import annotations

import logging
from typing import Iterator

import pytest

import burrow
from conftest import Echo, Pki, echo_exact, edge_addr, tls_client, wait_until


@pytest.fixture
def bridge_off() -> Iterator[None]:
    yield
    burrow.log_level("OFF")


def messages(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.name == "burrow")


def test_rust_logs_reach_python_logging(edge: burrow.Edge, caplog: pytest.LogCaptureFixture,
                                        bridge_off: None) -> None:
    burrow.log_level("INFO")
    service = Echo()
    with caplog.at_level(logging.INFO, logger="burrow"):
        listener = burrow.forward(service.port, proto="tls", terminate_at="edge", **edge.options())
        wait_until(lambda: f"endpoint online url={listener.url()}" in messages(caplog), "the endpoint online record")
        record = next(r for r in caplog.records if "endpoint online" in r.getMessage())
        assert record.levelno == logging.INFO
        assert not any(r.levelno < logging.INFO for r in caplog.records), "INFO and above only"


def test_trace_logs_hold_no_secrets(edge: burrow.Edge, pki: Pki, caplog: pytest.LogCaptureFixture,
                                    bridge_off: None) -> None:
    token = "tok-" + "s3cr3t" * 4
    cert = pki.leaf("sec.py.test")
    key_body = b"".join(cert.key.splitlines()[1:-1]).decode()
    burrow.log_level(5)  # TRACE, as a logging number
    service = Echo()
    with caplog.at_level(5, logger="burrow"):
        listener = burrow.forward(service.port, proto="tls", domain="sec.py.test", crt=cert.crt, key=cert.key,
                                  terminate_at="agent", authtoken=token, **edge.options())
        with tls_client(edge_addr(listener), "sec.py.test", pki.ca_pem) as conn:
            echo_exact(conn, b"traced")
        # the last event of this flow: once it is here, every earlier one is (one delivery thread, in order)
        wait_until(lambda: "connection client=" in messages(caplog), "the connection record")
        text = messages(caplog)
    assert token not in text, "the authtoken never appears in logs"
    assert key_body[60:100] not in text and key_body[-40:] not in text, "the private key never appears in logs"
    assert token not in repr(listener)


def test_off_stops_the_bridge(edge: burrow.Edge, caplog: pytest.LogCaptureFixture) -> None:
    burrow.log_level("INFO")
    burrow.log_level("OFF")
    service = Echo()
    with caplog.at_level(logging.DEBUG, logger="burrow"):
        first = burrow.forward(service.port, proto="tls", terminate_at="edge", **edge.options())
        # A marker event after the forward: once the INFO bridge delivers it, anything the
        # forward logged would have arrived too (one delivery thread, in order).
        burrow.log_level("INFO")
        second = burrow.forward(service.port, proto="tls", terminate_at="edge", **edge.options())
        wait_until(lambda: f"endpoint online url={second.url()}" in messages(caplog), "the second endpoint")
        burrow.log_level("OFF")
    assert f"endpoint online url={first.url()}" not in messages(caplog)
