"""burrow: put a local service on a public ``tls://`` address.

Mirrors ngrok's Python SDK, so ``import burrow as ngrok`` works::

    listener = burrow.forward("localhost:8080", proto="tls", domain="app.example.com")
    print(listener.url())

Goes further: ``terminate_at="agent"`` (the agent terminates TLS with your crt/key),
an in-process :class:`Edge` for tests, and errors for unknown options.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from pathlib import Path
from typing import Any, Awaitable, Dict, List, Optional, Tuple, Union

from . import _burrow
from ._burrow import (
    AuthError,
    BindError,
    CertificateError,
    ConnectionError,
    Error,
    PolicyError,
)

__all__ = [
    "AuthError", "BindError", "CertificateError", "ConnectionError", "Edge", "Error",
    "Listener", "PolicyError", "Session", "SessionBuilder", "TcpEndpointBuilder",
    "TlsEndpointBuilder", "async_forward", "connect", "disconnect", "forward",
    "get_listeners", "kill", "log_level", "set_auth_token",
]

Pem = Union[bytes, bytearray, str, Path]

_SESSION_OPTIONS = {"authtoken", "authtoken_from_env", "server_addr", "root_cas", "session_ca_cert",
                    "session_metadata", "force_new_session"}
_ENDPOINT_OPTIONS = {"addr", "proto", "domain", "hostname", "url", "crt", "key", "mutual_tls_cas",
                     "terminate_at", "traffic_policy", "policy", "proxy_proto", "metadata", "forwards_to",
                     "allow_cidr", "deny_cidr", "remote_addr", "verify_upstream_tls", "upstream_root_cas"}
# ngrok options burrow knows but does not implement (mostly HTTP endpoint features).
_UNSUPPORTED = {"pooling_enabled", "basic_auth", "circuit_breaker", "compression", "oauth_provider",
                "oauth_allow_domains", "oauth_allow_emails", "oauth_scopes", "oidc_issuer_url",
                "oidc_client_id", "oidc_client_secret", "request_header_add", "request_header_remove",
                "response_header_add", "response_header_remove", "schemes", "websocket_tcp_converter",
                "app_protocol", "label", "labels", "verify_webhook_provider", "verify_webhook_secret",
                "ip_restriction_allow_cidrs", "ip_restriction_deny_cidrs", "policy_file",
                "bindings", "session_ca_certs"}
_LIST_OPTIONS = {"allow_cidr", "deny_cidr"}
_PEM_OPTIONS = {"crt", "key", "mutual_tls_cas", "root_cas", "session_ca_cert", "upstream_root_cas"}

_lock = threading.Lock()
_auth_token: Optional[str] = None
_sessions: Dict[Tuple[Any, ...], "_burrow.NativeSession"] = {}
_listeners: Dict[str, "Listener"] = {}


def _error(code: str, message: str, cls: type = Error) -> Error:
    err = cls(message)
    err.code = code  # type: ignore[attr-defined]
    err.message = message  # type: ignore[attr-defined]
    return err


def _pem(name: str, value: Pem) -> bytes:
    if isinstance(value, Path):
        try:
            return value.read_bytes()
        except OSError as e:
            raise _error("IO", f"{name}: cannot read {value}: {e.strerror}") from None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    raise _error("INVALID_OPTION", f"{name} must be bytes, bytearray, str PEM text or a pathlib.Path, not {type(value).__name__}")


def _normalize(addr: Any, options: Dict[str, Any]) -> Dict[str, Any]:
    """Applies ngrok's coercions and refuses what burrow does not understand."""
    opts: Dict[str, Any] = {}
    for raw_key, value in options.items():
        key = raw_key.replace(".", "_")
        if value is None:
            continue
        if key in _UNSUPPORTED:
            raise _error("UNSUPPORTED", f"option {raw_key!r} is an ngrok option burrow does not support")
        if key not in _SESSION_OPTIONS and key not in _ENDPOINT_OPTIONS:
            raise _error("INVALID_OPTION", f"unknown option {raw_key!r}")
        opts[key] = value
    if addr is not None:
        opts["addr"] = addr
    if "hostname" in opts:
        opts.setdefault("domain", opts.pop("hostname"))
    if "policy" in opts:
        opts.setdefault("traffic_policy", opts.pop("policy"))
    if "session_ca_cert" in opts:
        opts.setdefault("root_cas", opts.pop("session_ca_cert"))
    if "url" in opts:
        url = str(opts.pop("url"))
        scheme, _, rest = url.partition("://")
        if not rest or scheme not in ("tls", "tcp"):
            raise _error("INVALID_URL", f"url {url!r} must be tls://NAME or tcp://HOST:PORT")
        opts.setdefault("proto", scheme)
        if scheme == "tls":
            opts.setdefault("domain", rest.split(":")[0])
        else:
            opts.setdefault("remote_addr", rest)
    proto = str(opts.get("proto", "tls"))
    if proto in ("http", "https", "labeled"):
        raise _error("UNSUPPORTED", f"proto {proto!r} is not supported yet: burrow serves tls and tcp endpoints")
    if proto not in ("tls", "tcp"):
        raise _error("INVALID_OPTION", f"proto {proto!r} is not one of 'tls', 'tcp'")
    opts["proto"] = proto
    a = opts.get("addr")
    if a is None:
        opts["addr"] = "localhost:80"
    elif isinstance(a, bool) or not isinstance(a, (int, str)):
        raise _error("INVALID_URL", f"addr must be a port number or an address string, not {type(a).__name__}")
    else:
        opts["addr"] = f"localhost:{a}" if isinstance(a, int) else a
    for key in _PEM_OPTIONS & opts.keys():
        opts[key] = _pem(key, opts[key])
    for key in _LIST_OPTIONS & opts.keys():
        v = opts[key]
        opts[key] = [v] if isinstance(v, str) else list(v)
    if ("crt" in opts) != ("key" in opts):
        missing = "key" if "crt" in opts else "crt"
        raise _error("INVALID_OPTION", f"Missing {missing} for tls termination")
    if "traffic_policy" in opts and not isinstance(opts["traffic_policy"], str):
        raise _error("INVALID_OPTION", "traffic_policy must be a YAML or JSON string")
    if "proxy_proto" in opts:
        opts["proxy_proto"] = str(opts["proxy_proto"])
    if opts.pop("authtoken_from_env", False) and "authtoken" not in opts:
        token = os.environ.get("BURROW_AUTHTOKEN") or os.environ.get("NGROK_AUTHTOKEN")
        if token:
            opts["authtoken"] = token
    if "authtoken" not in opts and _auth_token:
        opts["authtoken"] = _auth_token
    if "server_addr" not in opts and os.environ.get("BURROW_SERVER_ADDR"):
        opts["server_addr"] = os.environ["BURROW_SERVER_ADDR"]
    return opts


def _session_key(opts: Dict[str, Any]) -> Tuple[Any, ...]:
    return (opts.get("server_addr"), opts.get("authtoken"), opts.get("root_cas"), opts.get("session_metadata"))


def _session_for(opts: Dict[str, Any]) -> "_burrow.NativeSession":
    key = _session_key(opts)
    with _lock:
        if not opts.get("force_new_session") and key in _sessions:
            return _sessions[key]
    native = _burrow.NativeSession.connect(opts)
    if native.embedded_edge() is not None:
        logging.getLogger("burrow").info("no server address given: started an embedded edge in this process")
    with _lock:
        _sessions.setdefault(key, native)
    return native


async def _session_for_async(opts: Dict[str, Any]) -> "_burrow.NativeSession":
    key = _session_key(opts)
    with _lock:
        if not opts.get("force_new_session") and key in _sessions:
            return _sessions[key]
    native = await _burrow.NativeSession.connect_async(opts)
    with _lock:
        _sessions.setdefault(key, native)
    return native


class Listener:
    """A forwarding endpoint. It keeps running until :meth:`close`, :func:`disconnect` or
    :func:`kill`; dropping the last reference does not stop it (the module keeps one,
    see :func:`get_listeners`)."""

    def __init__(self, native: "_burrow.NativeListener") -> None:
        self._native = native
        self._closed = False
        with _lock:
            _listeners[native.id()] = self

    def id(self) -> str:
        return self._native.id()

    def url(self) -> str:
        return self._native.url()

    def proto(self) -> str:
        return self._native.proto()

    def metadata(self) -> str:
        return self._native.metadata()

    def forwards_to(self) -> str:
        return self._native.forwards_to()

    def terminate_at(self) -> str:
        return self._native.terminate_at()

    def close(self) -> None:
        """Stops the endpoint; calling it again does nothing."""
        if not self._closed:
            self._closed = True
            self._native.close()
        with _lock:
            _listeners.pop(self.id(), None)

    def join(self) -> None:
        """Blocks until the endpoint is closed (Ctrl-C interrupts)."""
        self._native.join()

    async def async_join(self) -> None:
        await self._native.join_async()

    def __enter__(self) -> "Listener":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> "Listener":
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<burrow.Listener {self.url()} terminate_at={self.terminate_at()}>"


def _forward_blocking(addr: Any, options: Dict[str, Any]) -> Listener:
    opts = _normalize(addr, options)
    return Listener(_session_for(opts).forward(opts))


async def async_forward(addr: Any = None, proto: Optional[str] = None, **options: Any) -> Listener:
    """Like :func:`forward`, always awaitable."""
    if proto is not None:
        options["proto"] = proto
    opts = _normalize(addr, options)
    session = await _session_for_async(opts)
    return Listener(await session.forward_async(opts))


def forward(addr: Any = None, proto: Optional[str] = None, **options: Any) -> Any:
    """Puts ``addr`` (``8080``, ``"host:port"``, ``"tcp://…"``, ``"tls://…"``) behind a public endpoint.

    Blocks and returns a :class:`Listener` when no asyncio loop runs in this thread;
    inside a running loop returns an awaitable, as ngrok's SDK does.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        if proto is not None:
            options["proto"] = proto
        return _forward_blocking(addr, options)
    return async_forward(addr, proto, **options)


connect = forward


def get_listeners() -> List[Listener]:
    """Every open listener made through this module."""
    with _lock:
        return list(_listeners.values())


def disconnect(url: Optional[str] = None) -> None:
    """Closes the listener with this URL, or every listener when ``url`` is None."""
    for listener in get_listeners():
        if url is None or listener.url() == url:
            listener.close()


def kill() -> None:
    """Closes every listener and session."""
    disconnect()
    with _lock:
        sessions = list(_sessions.values())
        _sessions.clear()
    for s in sessions:
        s.close()


def set_auth_token(token: str) -> None:
    """The authtoken used when none is passed."""
    global _auth_token
    _auth_token = token


def log_level(level: Union[str, int] = "INFO") -> None:
    """Forwards burrow's Rust logs at ``level`` and above to ``logging.getLogger("burrow")``."""
    if isinstance(level, int):
        level = logging.getLevelName(level)
    _burrow.set_log_level(str(level))
    logger = logging.getLogger("burrow")
    if str(level).upper() != "OFF":
        logger.setLevel(str(level).upper().replace("TRACE", "DEBUG"))


class Edge:
    """An edge running in this process, for tests and local use.

    Keyword arguments are edge config keys (see the README), e.g. ``authtokens=[...]``.
    """

    def __init__(self, **config: Any) -> None:
        self._native = _burrow.NativeEdge.start(_toml(config))

    @property
    def tunnel_addr(self) -> str:
        return self._native.tunnel_addr()

    @property
    def tls_addr(self) -> str:
        return self._native.tls_addr()

    @property
    def tls_port(self) -> int:
        return int(self.tls_addr.rsplit(":", 1)[1])

    @property
    def ca_pem(self) -> str:
        return self._native.ca_pem()

    def options(self) -> Dict[str, Any]:
        """Session options that point a forward() at this edge."""
        return {"server_addr": self.tunnel_addr, "root_cas": self.ca_pem}

    def close(self) -> None:
        self._native.close()

    def __enter__(self) -> "Edge":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _toml(config: Dict[str, Any]) -> str:
    if not config:
        return ""
    config = dict(config)
    config.setdefault("open", not config.get("authtokens"))
    config.setdefault("tcp_ports", [0, 0])
    lines: List[str] = []
    tables: List[str] = []

    def lit(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return str(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(lit(x) for x in v) + "]"
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    for k, v in config.items():
        if k == "authtokens":
            for rule in v:
                tables.append("[[authtokens]]\n" + "\n".join(f"{rk} = {lit(rv)}" for rk, rv in rule.items()))
        else:
            lines.append(f"{k} = {lit(v)}")
    return "\n".join(lines + tables) + "\n"


class Session:
    """A session made by :class:`SessionBuilder`."""

    def __init__(self, native: "_burrow.NativeSession") -> None:
        self._native = native

    def tls_endpoint(self) -> "TlsEndpointBuilder":
        return TlsEndpointBuilder(self, "tls")

    def tcp_endpoint(self) -> "TcpEndpointBuilder":
        return TcpEndpointBuilder(self, "tcp")

    def close(self) -> None:
        self._native.close()


class SessionBuilder:
    """ngrok-style session builder: ``SessionBuilder().authtoken_from_env().connect()``."""

    def __init__(self) -> None:
        self._opts: Dict[str, Any] = {}

    def authtoken(self, token: str) -> "SessionBuilder":
        self._opts["authtoken"] = token
        return self

    def authtoken_from_env(self) -> "SessionBuilder":
        self._opts["authtoken_from_env"] = True
        return self

    def server_addr(self, addr: str) -> "SessionBuilder":
        self._opts["server_addr"] = addr
        return self

    def root_cas(self, pem: Pem) -> "SessionBuilder":
        self._opts["root_cas"] = pem
        return self

    def ca_cert(self, pem: Pem) -> "SessionBuilder":
        return self.root_cas(pem)

    def metadata(self, metadata: str) -> "SessionBuilder":
        self._opts["session_metadata"] = metadata
        return self

    def connect(self) -> Session:
        return Session(_burrow.NativeSession.connect(_normalize(None, dict(self._opts))))


class _EndpointBuilder:
    def __init__(self, session: Session, proto: str) -> None:
        self._session = session
        self._opts: Dict[str, Any] = {"proto": proto}

    def _set(self, key: str, value: Any) -> Any:
        self._opts[key] = value
        return self

    def metadata(self, metadata: str) -> Any:
        return self._set("metadata", metadata)

    def forwards_to(self, to: str) -> Any:
        return self._set("forwards_to", to)

    def termination(self, crt: Pem, key: Pem) -> Any:
        self._opts.update(crt=crt, key=key, terminate_at="edge")
        return self

    def agent_termination(self, crt: Pem, key: Pem) -> Any:
        self._opts.update(crt=crt, key=key, terminate_at="agent")
        return self

    def mutual_tlsca(self, ca: Pem) -> Any:
        return self._set("mutual_tls_cas", ca)

    def traffic_policy(self, policy: str) -> Any:
        return self._set("traffic_policy", policy)

    def proxy_proto(self, version: str) -> Any:
        return self._set("proxy_proto", version)

    def allow_cidr(self, cidr: str) -> Any:
        self._opts.setdefault("allow_cidr", []).append(cidr)
        return self

    def deny_cidr(self, cidr: str) -> Any:
        self._opts.setdefault("deny_cidr", []).append(cidr)
        return self

    def listen_and_forward(self, url: Union[str, int]) -> Listener:
        opts = _normalize(url, dict(self._opts))
        return Listener(self._session._native.forward(opts))


class TlsEndpointBuilder(_EndpointBuilder):
    """Builds a TLS endpoint."""

    def domain(self, domain: str) -> "TlsEndpointBuilder":
        return self._set("domain", domain)


class TcpEndpointBuilder(_EndpointBuilder):
    """Builds a TCP endpoint."""

    def remote_addr(self, addr: str) -> "TcpEndpointBuilder":
        return self._set("remote_addr", addr)
