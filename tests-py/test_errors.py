"""Every error: exception class, `.code`, and a message naming the problem."""

from __future__ import annotations

import pytest

import burrow
from conftest import Echo, Pki


def test_errors_are_value_errors_with_codes() -> None:
    assert issubclass(burrow.Error, ValueError)
    for cls in (burrow.AuthError, burrow.BindError, burrow.CertificateError, burrow.PolicyError, burrow.ConnectionError):
        assert issubclass(cls, burrow.Error)


def test_bad_token() -> None:
    with burrow.Edge(authtokens=[{"token": "right", "domains": ["*.ok.test"]}]) as edge:
        with pytest.raises(burrow.AuthError) as e:
            burrow.forward(8080, authtoken="wrong", **edge.options())
        assert e.value.code == "AUTH_FAILED"
        assert "authtoken" in e.value.message and "wrong" not in str(e.value)


def test_domain_refused() -> None:
    with burrow.Edge(authtokens=[{"token": "right", "domains": ["*.ok.test"]}]) as edge:
        with pytest.raises(burrow.BindError) as e:
            burrow.forward(8080, authtoken="right", domain="app.other.test", **edge.options())
        assert e.value.code == "DOMAIN_NOT_ALLOWED"
        assert "app.other.test" in e.value.message


def test_cert_mismatch_and_malformed_pem(edge: burrow.Edge, pki: Pki) -> None:
    other = pki.leaf("other.test")
    with pytest.raises(burrow.CertificateError) as e:
        burrow.forward(8080, domain="app.test", crt=other.crt, key=other.key, **edge.options())
    assert e.value.code == "CERT_DOMAIN_MISMATCH" and "app.test" in e.value.message
    with pytest.raises(burrow.CertificateError) as e:
        burrow.forward(8080, domain="app.test", crt=b"not a certificate", key=other.key, **edge.options())
    assert e.value.code == "INVALID_PEM" and "crt" in e.value.message


def test_crt_without_key(edge: burrow.Edge, pki: Pki) -> None:
    with pytest.raises(burrow.Error) as e:
        burrow.forward(8080, domain="app.test", crt=pki.leaf("app.test").crt, **edge.options())
    assert e.value.code == "INVALID_OPTION"
    assert e.value.message == "Missing key for tls termination"


def test_unknown_and_unsupported_options(edge: burrow.Edge) -> None:
    with pytest.raises(burrow.Error) as e:
        burrow.forward(8080, domian="typo.test", **edge.options())
    assert e.value.code == "INVALID_OPTION" and "domian" in e.value.message
    with pytest.raises(burrow.Error) as e:
        burrow.forward(8080, pooling_enabled=True, **edge.options())
    assert e.value.code == "UNSUPPORTED" and "pooling_enabled" in e.value.message
    with pytest.raises(burrow.Error) as e:
        burrow.forward(8080, proto="http", **edge.options())
    assert e.value.code == "UNSUPPORTED" and "http" in e.value.message


def test_bad_policy_names_the_field(edge: burrow.Edge) -> None:
    policy = "on_tcp_connect:\n  - actions:\n      - type: terminate-tls\n        config: {min_version: '1.1'}\n"
    with pytest.raises(burrow.PolicyError) as e:
        burrow.forward(8080, traffic_policy=policy, **edge.options())
    assert e.value.code == "INVALID_POLICY"
    assert "on_tcp_connect[0].actions[0].config.min_version" in e.value.message


def test_unreachable_edge() -> None:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(burrow.ConnectionError) as e:
        burrow.forward(8080, server_addr=f"127.0.0.1:{port}", root_cas=Pki().ca_pem)
    assert e.value.code == "CONNECT_FAILED"
