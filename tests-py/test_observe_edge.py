"""The edge admin API and metrics (issue 17), driven from Python as an operator would:
HTTP + JSON with a bearer token against an in-process burrow.Edge; a stop with a reason
reaches the SDK's handle_stop_command (a hook taking one argument gets it; ngrok's
no-argument hooks keep working)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

import burrow
from conftest import Echo, Pki, echo_exact, tls_client, wait_until

AUTHTOKEN = "py-observe-authtoken-71c2"
ADMIN_TOKEN = "py-observe-admin-token-0d94e1"


@pytest.fixture
def admin_edge() -> Iterator[burrow.Edge]:
    with burrow.Edge(authtokens=[{"token": AUTHTOKEN, "domains": ["*.py-observe.test"]}],
                     admin_addr="127.0.0.1:0", admin_token=ADMIN_TOKEN,
                     metrics_addr="127.0.0.1:0") as edge:
        yield edge


def builder(edge: burrow.Edge) -> burrow.SessionBuilder:
    return (burrow.SessionBuilder().server_addr(edge.tunnel_addr).ca_cert(edge.ca_pem.encode())
            .authtoken(AUTHTOKEN))


def call(edge: burrow.Edge, method: str, path: str, token: Optional[str] = ADMIN_TOKEN,
         body: Optional[Dict[str, Any]] = None) -> Tuple[int, Dict[str, Any], str]:
    """One admin API request: (status, JSON, raw body)."""
    assert edge.admin_addr
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://{edge.admin_addr}{path}", data=data, method=method)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=15) as res:
            raw = res.read().decode()
            assert res.headers["Content-Type"] == "application/json"
            return res.status, json.loads(raw), raw
    except urllib.error.HTTPError as e:
        raw = e.read().decode()
        return e.code, json.loads(raw), raw


def test_stop_with_a_reason_reaches_the_python_hook(admin_edge: burrow.Edge, pki: Pki) -> None:
    bodies: List[str] = []
    for token in (None, "not-the-admin-token-at-all"):
        status, got, raw = call(admin_edge, "GET", "/api/sessions", token=token)
        bodies.append(raw)
        assert status == 401 and got["error"]["code"] == "AUTH_FAILED"

    reasons: List[Optional[str]] = []
    bare: List[bool] = []
    with_reason = builder(admin_edge).handle_stop_command(lambda reason: reasons.append(reason)).connect()
    ngrok_style = builder(admin_edge).handle_stop_command(lambda: bare.append(True)).connect()
    leaf = pki.leaf("term.py-observe.test")
    service = Echo()
    listener = (with_reason.tls_endpoint().domain("term.py-observe.test")
                .termination(leaf.crt, leaf.key).listen())
    listener.forward(f"localhost:{service.port}")
    conn = tls_client(("127.0.0.1", admin_edge.tls_port), "term.py-observe.test", pki.ca_pem)
    echo_exact(conn, b"through the edge" * 64)
    conn.close()

    status, got, raw = call(admin_edge, "GET", "/api/sessions")
    bodies.append(raw)
    assert status == 200
    ids = {s["id"] for s in got["sessions"]}
    assert ids == {with_reason.id(), ngrok_style.id()}
    mine = next(s for s in got["sessions"] if s["id"] == with_reason.id())
    assert mine["token_name"] == "authtokens[0]"
    assert mine["endpoints"] == [listener.url()]

    def endpoint() -> Dict[str, Any]:
        status, got, raw = call(admin_edge, "GET", "/api/endpoints")
        bodies.append(raw)
        assert status == 200
        return next(e for e in got["endpoints"] if e["url"] == listener.url())

    wait_until(lambda: endpoint()["connections_open"] == 0, "the connection to close")
    ep = endpoint()
    assert (ep["proto"], ep["termination"], ep["connections_total"]) == ("tls", "edge", 1)
    assert ep["bytes_in"] >= 16 * 64 and ep["bytes_out"] >= 16 * 64

    status, got, raw = call(admin_edge, "POST", f"/api/sessions/{with_reason.id()}/stop",
                            body={"reason": "python maintenance"})
    bodies.append(raw)
    assert status == 200 and got["stopped"] is True
    assert reasons == ["python maintenance"]
    status, _, raw = call(admin_edge, "POST", f"/api/sessions/{ngrok_style.id()}/stop",
                          body={"reason": "ignored by a no-argument hook"})
    bodies.append(raw)
    assert status == 200 and bare == [True]
    admin_edge.send_command(with_reason.id(), "stop")
    assert reasons == ["python maintenance", None]
    admin_edge.send_command(with_reason.id(), "stop", reason="direct")
    assert reasons[-1] == "direct"

    status, got, raw = call(admin_edge, "GET", "/api/status")
    bodies.append(raw)
    assert status == 200 and got["draining"] is False and got["sessions"] == 2
    text = admin_edge.metrics_text()
    assert "burrow_edge_public_connections_accepted_total 1" in text
    bodies.append(text)
    for body in bodies:
        for secret in (AUTHTOKEN, ADMIN_TOKEN, leaf.key.decode().strip()):
            assert secret not in body
