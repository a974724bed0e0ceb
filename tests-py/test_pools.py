"""Endpoint pools: ngrok's pooling_enabled lets several sessions serve one name."""

from __future__ import annotations

import pytest

import burrow
from conftest import Echo, echo_exact, edge_addr, tls_client


def test_pooled_listeners_share_a_domain_and_others_are_refused(edge: burrow.Edge, data: bytes) -> None:
    services = [Echo(), Echo()]
    # Two sessions (as two agents would be), both opting in: both get the name's URL.
    first = burrow.forward(services[0].port, proto="tls", domain="app.pool.test", terminate_at="edge", pooling_enabled=True,
                           **edge.options())
    second = burrow.forward(services[1].port, proto="tls", domain="app.pool.test", terminate_at="edge", pooling_enabled=True,
                            force_new_session=True, **edge.options())
    assert first.url() == second.url() == f"tls://app.pool.test:{edge.tls_port}"
    for _ in range(4):
        with tls_client(edge_addr(first), "app.pool.test", edge.ca_pem.encode()) as conn:
            echo_exact(conn, data)

    # A third session without the option is refused, as for any name another session holds.
    with pytest.raises(burrow.BindError) as e:
        burrow.forward(services[0].port, proto="tls", domain="app.pool.test", force_new_session=True, **edge.options())
    assert e.value.code == "DOMAIN_TAKEN" and "app.pool.test" in e.value.message

    # The builder spells it as ngrok's does.
    session = burrow.SessionBuilder().server_addr(edge.tunnel_addr).root_cas(edge.ca_pem).connect()
    with session:
        third = session.tls_endpoint().domain("app.pool.test").pooling_enabled(True).listen()
        assert third.url() == first.url()
