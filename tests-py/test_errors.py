"""Every error: exception class, `.code`, and a message naming the problem."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import burrow
from burrow import _burrow
from conftest import Pki, free_port


def test_errors_are_value_errors_with_codes() -> None:
    assert issubclass(burrow.Error, ValueError)
    for cls in (burrow.AuthError, burrow.BindError, burrow.CertificateError, burrow.PolicyError,
                burrow.ConnectionError):
        assert issubclass(cls, burrow.Error)


# Every code of burrow_core::ErrorCode, with the class the binding maps it to.
CODES = {
    "AUTH_FAILED": burrow.AuthError, "RATE_LIMITED": burrow.AuthError,
    "DOMAIN_NOT_ALLOWED": burrow.BindError, "DOMAIN_TAKEN": burrow.BindError,
    "PORT_UNAVAILABLE": burrow.BindError, "LIMIT_EXCEEDED": burrow.BindError,
    "INVALID_DOMAIN": burrow.BindError,
    "CERT_DOMAIN_MISMATCH": burrow.CertificateError, "KEY_MISMATCH": burrow.CertificateError,
    "INVALID_PEM": burrow.CertificateError, "ACME_FAILED": burrow.CertificateError,
    "ACME_UNREACHABLE": burrow.CertificateError, "ACME_RATE_LIMITED": burrow.CertificateError,
    "INVALID_POLICY": burrow.PolicyError,
    "CONNECT_FAILED": burrow.ConnectionError, "TIMEOUT": burrow.ConnectionError,
    "CLOSED": burrow.ConnectionError, "VERSION_MISMATCH": burrow.ConnectionError,
    "PROTOCOL": burrow.ConnectionError, "EDGE_DRAINING": burrow.ConnectionError,
    "INVALID_URL": burrow.Error, "INVALID_OPTION": burrow.Error, "UNSUPPORTED": burrow.Error,
    "CONFIG": burrow.Error, "IO": burrow.Error, "INTERNAL": burrow.Error,
}


def test_the_table_lists_every_core_code() -> None:
    """A code added to the core must be placed in a class on purpose (core's ErrorCode::kind, and here)."""
    core_codes = {code for code, _ in _burrow.error_codes()}
    assert len(core_codes) > 20
    assert core_codes == set(CODES)


# ngrok's codes where ngrok documents the same failure (README "Errors").
NGROK_CODES = {
    "AUTH_FAILED": "ERR_NGROK_105", "DOMAIN_NOT_ALLOWED": "ERR_NGROK_319",
    "DOMAIN_TAKEN": "ERR_NGROK_334", "KEY_MISMATCH": "ERR_NGROK_1923",
    "INVALID_POLICY": "ERR_NGROK_2236", "INVALID_DOMAIN": "ERR_NGROK_326",
    "PROTOCOL": "ERR_NGROK_801",
}


@pytest.mark.parametrize("code", sorted(CODES))
def test_args_are_ngroks_message_cause_code(code: str) -> None:
    err = _burrow.new_error(code, f"what went wrong ({code})")
    assert err.args == (err.message, err.message, NGROK_CODES.get(code, code))
    assert err.code == code
    assert dict(_burrow.error_codes())[code] == NGROK_CODES.get(code)


@pytest.mark.parametrize("code", sorted(CODES))
def test_every_core_code_maps_to_a_class(code: str) -> None:
    err = _burrow.new_error(code, f"what went wrong ({code})")
    assert type(err) is CODES[code]
    assert err.code == code and err.message == f"what went wrong ({code})" and str(err) == err.message


def test_bad_token() -> None:
    with burrow.Edge(authtokens=[{"token": "right", "domains": ["*.ok.test"]}]) as edge:
        with pytest.raises(burrow.AuthError) as e:
            burrow.forward(8080, authtoken="wrong-secret-token", **edge.options())
        assert e.value.code == "AUTH_FAILED"
        assert e.value.args[2] == "ERR_NGROK_105"
        assert "authtoken" in e.value.message
        assert "wrong-secret-token" not in str(e.value) and "wrong-secret-token" not in repr(e.value)


def test_domain_refused_and_taken() -> None:
    with burrow.Edge(authtokens=[{"token": "right", "domains": ["*.ok.test"]}]) as edge:
        with pytest.raises(burrow.BindError) as e:
            burrow.forward(8080, authtoken="right", domain="app.other.test", **edge.options())
        assert e.value.code == "DOMAIN_NOT_ALLOWED"
        assert "app.other.test" in e.value.message
        burrow.forward(8080, authtoken="right", domain="app.ok.test", **edge.options())
        with pytest.raises(burrow.BindError) as e:
            burrow.forward(8080, authtoken="right", domain="app.ok.test", force_new_session=True, **edge.options())
        assert e.value.code == "DOMAIN_TAKEN" and "app.ok.test" in e.value.message


def test_port_unavailable() -> None:
    port = free_port()
    with burrow.Edge(tcp_ports=[port, port]) as edge:
        other = port + 1 if port < 65535 else port - 1
        with pytest.raises(burrow.BindError) as e:
            burrow.forward(8080, "tcp", remote_addr=f"127.0.0.1:{other}", **edge.options())
        assert e.value.code == "PORT_UNAVAILABLE" and str(other) in e.value.message


def test_cert_mismatch_key_mismatch_and_malformed_pem(edge: burrow.Edge, pki: Pki) -> None:
    other = pki.leaf("other.test")
    mine = pki.leaf("app.test")
    with pytest.raises(burrow.CertificateError) as e:
        burrow.forward(8080, domain="app.test", crt=other.crt, key=other.key, **edge.options())
    assert e.value.code == "CERT_DOMAIN_MISMATCH" and "app.test" in e.value.message
    with pytest.raises(burrow.CertificateError) as e:
        burrow.forward(8080, domain="app.test", crt=mine.crt, key=other.key, **edge.options())
    assert e.value.code == "KEY_MISMATCH" and "key" in e.value.message
    with pytest.raises(burrow.CertificateError) as e:
        burrow.forward(8080, domain="app.test", crt=b"not a certificate", key=other.key, **edge.options())
    assert e.value.code == "INVALID_PEM" and "crt" in e.value.message
    secret_key = b"-----BEGIN PRIVATE KEY-----\nU0VDUkVUS0VZTUFURVJJQUw=\n-----END PRIVATE KEY-----\n"
    with pytest.raises(burrow.CertificateError) as e:
        burrow.forward(8080, domain="app.test", crt=mine.crt, key=secret_key, terminate_at="agent", **edge.options())
    assert e.value.code in ("INVALID_PEM", "KEY_MISMATCH") and "key" in e.value.message
    assert "U0VDUkVUS0VZTUFURVJJQUw" not in str(e.value), "key material never in errors"


def test_pem_path_that_does_not_exist(edge: burrow.Edge, tmp_path: Path) -> None:
    with pytest.raises(burrow.Error) as e:
        burrow.forward(8080, crt=tmp_path / "missing.pem", key=tmp_path / "missing.pem", **edge.options())
    assert e.value.code == "IO" and "missing.pem" in e.value.message


def test_crt_without_key(edge: burrow.Edge, pki: Pki) -> None:
    with pytest.raises(burrow.Error) as e:
        burrow.forward(8080, domain="app.test", crt=pki.leaf("app.test").crt, **edge.options())
    assert e.value.code == "INVALID_OPTION"
    assert e.value.message == "Missing key for tls termination"


def test_unknown_and_unsupported_options(edge: burrow.Edge) -> None:
    with pytest.raises(burrow.Error) as e:
        burrow.forward(8080, domian="typo.test", **edge.options())
    assert e.value.code == "INVALID_OPTION" and "domian" in e.value.message
    for option in ("bindings", "oauth.provider", "oidc_issuer_url", "labels"):
        with pytest.raises(burrow.Error) as e:
            burrow.forward(8080, **{option: "x"}, **edge.options())
        assert e.value.code == "UNSUPPORTED" and option in e.value.message and "not supported" in e.value.message
    with pytest.raises(burrow.Error) as e:
        burrow.forward(8080, proto="labeled", **edge.options())
    assert e.value.code == "UNSUPPORTED" and "labeled" in e.value.message
    # An http option on a tls endpoint names the option.
    with pytest.raises(burrow.Error) as e:
        burrow.forward(8080, proto="tls", basic_auth="ann:long-enough", **edge.options())
    assert e.value.code == "INVALID_OPTION" and "basic_auth" in e.value.message


def test_bad_values(edge: burrow.Edge) -> None:
    with pytest.raises(burrow.Error) as e:
        burrow.forward(8080, terminate_at="nowhere", **edge.options())
    assert e.value.code == "INVALID_OPTION" and "nowhere" in e.value.message
    with pytest.raises(burrow.Error) as e:
        burrow.forward("not a port", **edge.options())
    assert e.value.code == "INVALID_URL" and "not a port" in e.value.message
    with pytest.raises(burrow.Error) as e:
        burrow.forward(8080, url="gopher://app.test", **edge.options())
    assert e.value.code == "INVALID_URL" and "gopher://app.test" in e.value.message
    with pytest.raises(burrow.Error) as e:
        burrow.forward(8080, proxy_proto="3", terminate_at="edge", **edge.options())
    assert e.value.code == "INVALID_OPTION" and "proxy_proto" in e.value.message
    with pytest.raises(burrow.Error) as e:
        burrow.forward(8080, crt=123, key=b"", **edge.options())
    assert e.value.code == "INVALID_OPTION" and "crt" in e.value.message
    with pytest.raises(burrow.Error) as e:
        burrow.log_level("LOUD")
    assert e.value.code == "INVALID_OPTION" and "LOUD" in e.value.message


def test_invalid_domain_carries_ngroks_326(edge: burrow.Edge) -> None:
    with pytest.raises(burrow.BindError) as e:
        burrow.forward(8080, proto="tls", domain="not a domain", **edge.options())
    assert e.value.code == "INVALID_DOMAIN" and e.value.args[2] == "ERR_NGROK_326"
    assert "not a domain" in e.value.message


def test_bad_policy_names_the_field(edge: burrow.Edge) -> None:
    policy = "on_tcp_connect:\n  - actions:\n      - type: terminate-tls\n        config: {min_version: '1.1'}\n"
    with pytest.raises(burrow.PolicyError) as e:
        burrow.forward(8080, proto="tls", traffic_policy=policy, **edge.options())
    assert e.value.code == "INVALID_POLICY"
    assert "on_tcp_connect[0].actions[0].config.min_version" in e.value.message


def test_unreachable_edge() -> None:
    port = free_port()
    with pytest.raises(burrow.ConnectionError) as e:
        burrow.forward(8080, server_addr=f"127.0.0.1:{port}", root_cas=Pki().ca_pem)
    assert e.value.code == "CONNECT_FAILED" and str(port) in e.value.message


def test_closed_session(edge: burrow.Edge) -> None:
    session = burrow.SessionBuilder().server_addr(edge.tunnel_addr).root_cas(edge.ca_pem).connect()
    session.close()
    session.close()  # idempotent
    with pytest.raises(burrow.ConnectionError) as e:
        session.tls_endpoint().listen_and_forward(8080)
    assert e.value.code == "CLOSED" and "closed" in e.value.message


def test_edge_config_errors() -> None:
    with pytest.raises(burrow.Error) as e:
        burrow.Edge(tcp_ports=[3, 2])
    assert e.value.code == "CONFIG" and "tcp_ports" in e.value.message
    with pytest.raises(burrow.Error) as e:
        burrow.Edge(no_such_key=1)
    assert "no_such_key" in e.value.message

