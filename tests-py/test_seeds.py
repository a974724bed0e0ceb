"""The seed documents' Python examples, run as written apart from the import.

No server address is configured, so burrow starts its embedded edge in-process; the
service the examples expose listens on localhost:8080 as they say.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from conftest import Echo, Pki, echo_exact, tls_client


@pytest.fixture
def service_8080() -> Echo:
    try:
        return Echo(port=8080)
    except OSError as e:
        pytest.fail(f"the seed examples forward localhost:8080, which is busy here: {e}")
        raise


def test_cloud_service_example(tmp_path: Path, service_8080: Echo, pki: Pki, data: bytes) -> None:
    cert = pki.leaf("app.example.com")
    (tmp_path / "app-example-com-crt.pem").write_bytes(cert.crt)
    (tmp_path / "app-example-com-key.pem").write_bytes(cert.key)
    os.chdir(tmp_path)

    # --- the seed, with only the import changed ---
    import burrow as ngrok

    def load_file(name):  # type: ignore[no-untyped-def]
        with open(name, "r") as crt:
            return bytearray(crt.read().encode())

    listener = ngrok.forward("localhost:8080", authtoken_from_env=True,
        proto="tls",
        domain="app.example.com",
        crt=load_file("app-example-com-crt.pem"),
        key=load_file("app-example-com-key.pem"))

    print(f"Ingress established at: {listener.url()}")
    # --- end of the seed ---

    port = int(listener.url().rsplit(":", 1)[1])
    with tls_client(("127.0.0.1", port), "app.example.com", pki.ca_pem) as conn:
        assert conn.getpeercert(binary_form=True) == cert.der(), "edge terminates with the bytes passed"
        echo_exact(conn, data)


def test_terminate_at_upstream_example(tmp_path: Path, pki: Pki, data: bytes) -> None:
    cert = pki.leaf("app.example.com")
    try:
        service = Echo(cert, tmp_path, port=8080)
    except OSError as e:
        pytest.fail(f"the seed example forwards localhost:8080, which is busy here: {e}")

    # --- the seed, with only the import changed ---
    import burrow as ngrok

    listener = ngrok.forward("localhost:8080", authtoken_from_env=True,
        proto="tls",
        domain="app.example.com")

    print(f"Ingress established at: {listener.url()}");
    # --- end of the seed ---

    port = int(listener.url().rsplit(":", 1)[1])
    with tls_client(("127.0.0.1", port), "app.example.com", pki.ca_pem) as conn:
        assert conn.getpeercert(binary_form=True) == cert.der(), "the upstream terminates"
        echo_exact(conn, data)
    service.close()
