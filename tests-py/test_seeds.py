"""The seed documents' Python examples ("Cloud service" and "Terminate at Upstream"),
run as written apart from ``import ngrok`` -> ``import burrow as ngrok`` and the
certificate paths (``/path/to/`` -> a temporary directory).

The server address: none is configured, so burrow starts its embedded edge in this
process (on 127.0.0.1). The examples expose ``localhost:8080``; a service listens there.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict

import pytest

from conftest import Cert, Echo, Pki, echo_exact, tls_client
from seeds import CLOUD_SERVICE, TERMINATE_AT_UPSTREAM


def run_seed(source: str, tmp: Path) -> Dict[str, Any]:
    """Runs a seed example with only the import and the certificate paths changed."""
    changed = source.replace("import ngrok\n", "import burrow as ngrok\n", 1).replace("/path/to/", f"{tmp}/")
    assert changed.count("\n") == source.count("\n")
    namespace: Dict[str, Any] = {"__name__": "__seed__"}
    exec(compile(changed, "seed-example", "exec"), namespace)
    return namespace


def service_on_8080(cert: "Cert | None" = None, tmp: "Path | None" = None) -> Echo:
    try:
        return Echo(cert, tmp, port=8080)
    except OSError as e:
        pytest.fail(f"the seed examples forward localhost:8080, which is busy here: {e}")
        raise


def test_cloud_service_example(tmp_path: Path, pki: Pki, data: bytes, capsys: pytest.CaptureFixture[str],
                               caplog: pytest.LogCaptureFixture) -> None:
    cert = pki.leaf("app.example.com")
    (tmp_path / "app-example-com-crt.pem").write_bytes(cert.crt)
    (tmp_path / "app-example-com-key.pem").write_bytes(cert.key)
    service_on_8080()
    with caplog.at_level(logging.INFO, logger="burrow"):
        listener = run_seed(CLOUD_SERVICE, tmp_path)["listener"]
    assert [r.getMessage() for r in caplog.records if "embedded edge" in r.getMessage()] == [
        "no server address given: started an embedded edge in this process"], "one log line says so"
    assert f"Ingress established at: {listener.url()}" in capsys.readouterr().out
    assert listener.url().startswith("tls://app.example.com:")
    assert listener.terminate_at() == "edge"
    port = int(listener.url().rsplit(":", 1)[1])
    with tls_client(("127.0.0.1", port), "app.example.com", pki.ca_pem) as conn:
        assert conn.getpeercert(binary_form=True) == cert.der(), "the edge serves the bytes passed"
        echo_exact(conn, data)


def test_terminate_at_upstream_example(tmp_path: Path, pki: Pki, data: bytes) -> None:
    cert = pki.leaf("app.example.com")
    service_on_8080(cert, tmp_path)  # the upstream terminates TLS itself
    listener = run_seed(TERMINATE_AT_UPSTREAM, tmp_path)["listener"]
    assert listener.terminate_at() == "upstream"
    port = int(listener.url().rsplit(":", 1)[1])
    with tls_client(("127.0.0.1", port), "app.example.com", pki.ca_pem) as conn:
        assert conn.getpeercert(binary_form=True) == cert.der(), "the upstream's certificate, end to end"
        echo_exact(conn, data)
