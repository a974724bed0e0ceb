"""burrow: put a local service on a public ``tls://`` address.

Mirrors ngrok's Python SDK, so ``import burrow as ngrok`` works::

    listener = burrow.forward("localhost:8080", proto="tls", domain="app.example.com")
    print(listener.url())

Goes further: ``terminate_at="agent"`` (the agent terminates TLS with your crt/key),
an in-process :class:`Edge` for tests, and errors for unknown options.

Lifetime rule: a :class:`Listener` runs until :meth:`Listener.close`,
:func:`disconnect` or :func:`kill`. The module keeps a reference to every open
listener (see :func:`get_listeners`), so dropping yours never stops a forward.
"""

from __future__ import annotations

import asyncio
import json
import concurrent.futures
import logging
import threading
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

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

_log = logging.getLogger("burrow")

# --- options -----------------------------------------------------------------------
# Every option name, alias, coercion and refusal lives in the Rust core (one parser for
# Python, Node, the CLI and config files); Python values go to it as they are.


def _error(code: str, message: str) -> Error:
    """An exception of the class ``code`` maps to (one mapping, in the native module)."""
    err: Error = _burrow.new_error(code, message)
    return err


def _parse(scope: str, options: Dict[str, Any]) -> "_burrow.NativeOptions":
    return _burrow.parse_options(options, scope, _auth_token)


def _forward_options(addr: Any, proto: Optional[str], options: Dict[str, Any]) -> "_burrow.NativeOptions":
    if addr is not None:
        options["addr"] = addr
    if proto is not None:
        options["proto"] = proto
    return _parse("forward", options)


# --- sessions ------------------------------------------------------------------------

_lock = threading.Lock()
_auth_token: Optional[str] = None
_bridge_level = logging.CRITICAL + 1  # the level Rust events reach Python logging at (none yet)
_SessionKey = Tuple[Any, ...]
_sessions: Dict[_SessionKey, "_burrow.NativeSession"] = {}  # reused by later forwards
_all_sessions: List["_burrow.NativeSession"] = []  # every session kill() closes
_pending: Dict[_SessionKey, "concurrent.futures.Future[_burrow.NativeSession]"] = {}
_listeners: Dict[str, "Listener"] = {}


class _Abandoned(Exception):
    """The caller connecting a shared session was cancelled; waiters try again."""


def _session_key(opts: "_burrow.NativeOptions") -> _SessionKey:
    return (opts.reuse_key(),)


def _claim(key: _SessionKey) -> Tuple[Optional["_burrow.NativeSession"],
                                      "concurrent.futures.Future[_burrow.NativeSession]", bool]:
    """The shared session for ``key``, or a future to wait on, or (True) the duty to connect."""
    with _lock:
        if key in _sessions and not _sessions[key].is_open():
            del _sessions[key]  # closed (Session.close, or the edge gone for good): connect anew
        if key in _sessions:
            return _sessions[key], concurrent.futures.Future(), False
        if key in _pending:
            return None, _pending[key], False
        fut: concurrent.futures.Future[_burrow.NativeSession] = concurrent.futures.Future()
        _pending[key] = fut
        return None, fut, True


def _adopt(native: "_burrow.NativeSession", key: Optional[_SessionKey]) -> "_burrow.NativeSession":
    with _lock:
        _all_sessions.append(native)
        if key is not None:
            _sessions[key] = native
    if native.embedded_edge() is not None and _bridge_level > logging.INFO:
        # (With the bridge at INFO the core says this itself.)
        _log.info("no server address given: started an embedded edge in this process")
    return native


def _settle(key: _SessionKey, fut: "concurrent.futures.Future[_burrow.NativeSession]",
            native: Optional["_burrow.NativeSession"], error: Optional[BaseException]) -> None:
    if native is not None:
        _adopt(native, key)
    with _lock:
        _pending.pop(key, None)
    if native is not None:
        fut.set_result(native)
    else:
        fut.set_exception(error if isinstance(error, Exception) else _Abandoned())


def _session_for(opts: "_burrow.NativeOptions") -> "_burrow.NativeSession":
    """One session per (server, token, CA, metadata), connected once even under races."""
    if opts.force_new_session():
        return _adopt(_burrow.NativeSession.connect(opts), None)
    key = _session_key(opts)
    while True:
        native, fut, mine = _claim(key)
        if native is not None:
            return native
        if not mine:
            try:
                return fut.result()
            except _Abandoned:
                continue
        try:
            native = _burrow.NativeSession.connect(opts)
        except BaseException as e:
            _settle(key, fut, None, e)
            raise
        _settle(key, fut, native, None)
        return native


async def _session_for_async(opts: "_burrow.NativeOptions") -> "_burrow.NativeSession":
    """Like :func:`_session_for`, without blocking the event loop."""
    if opts.force_new_session():
        return _adopt(await _burrow.NativeSession.connect_async(opts), None)
    key = _session_key(opts)
    while True:
        native, fut, mine = _claim(key)
        if native is not None:
            return native
        if not mine:
            try:
                return await asyncio.wrap_future(fut)
            except _Abandoned:
                continue
        try:
            native = await _burrow.NativeSession.connect_async(opts)
        except BaseException as e:
            _settle(key, fut, None, e)
            raise
        _settle(key, fut, native, None)
        return native


def _in_running_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


# --- listeners -----------------------------------------------------------------------

class Listener:
    """A forwarding endpoint.

    It keeps running until :meth:`close`, :func:`disconnect` or :func:`kill`; dropping
    the last reference does not stop it (the module keeps one, see :func:`get_listeners`).
    """

    def __init__(self, native: "_burrow.NativeListener") -> None:
        self._native = native
        with _lock:
            _listeners[native.id()] = self

    def id(self) -> str:
        """The endpoint id the edge gave."""
        return self._native.id()

    def url(self) -> str:
        """The public URL, e.g. ``tls://app.example.com:443`` or ``tcp://host:port``."""
        return self._native.url()

    def proto(self) -> str:
        """``"tls"`` or ``"tcp"``."""
        return self._native.proto()

    def metadata(self) -> str:
        """The endpoint's metadata."""
        return self._native.metadata()

    def forwards_to(self) -> str:
        """The upstream this endpoint forwards to."""
        return self._native.forwards_to()

    def terminate_at(self) -> str:
        """Where TLS is terminated: ``"edge"``, ``"agent"`` or ``"upstream"``."""
        return self._native.terminate_at()

    def close(self) -> None:
        """Stops the endpoint; calling it again does nothing."""
        self._native.close()
        with _lock:
            _listeners.pop(self.id(), None)

    def join(self) -> None:
        """Blocks until the endpoint is closed (the GIL is released; Ctrl-C interrupts)."""
        self._native.join()

    async def async_join(self) -> None:
        """Waits until the endpoint is closed."""
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


async def async_forward(addr: Any = None, proto: Optional[str] = None, **options: Any) -> Listener:
    """Like :func:`forward`, always awaitable."""
    opts = _forward_options(addr, proto, options)
    session = await _session_for_async(opts)
    return Listener(await session.forward_async(opts))


def forward(addr: Any = None, proto: Optional[str] = None, **options: Any) -> Any:
    """Puts ``addr`` (``8080``, ``"host:port"``, ``"tcp://…"``, ``"tls://…"``) behind a public endpoint.

    Blocks and returns a :class:`Listener` when no asyncio loop runs in this thread;
    inside a running loop returns an awaitable, as ngrok's SDK does.
    """
    if _in_running_loop():
        return async_forward(addr, proto, **options)
    opts = _forward_options(addr, proto, options)
    return Listener(_session_for(opts).forward(opts))


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
    """Closes every listener and every session this module opened."""
    disconnect()
    with _lock:
        sessions = list(_all_sessions)
        _all_sessions.clear()
        _sessions.clear()
    for s in sessions:
        s.close()


def set_auth_token(token: str) -> None:
    """The authtoken used when a call passes none."""
    global _auth_token
    _auth_token = token


_LEVELS = {"OFF": logging.CRITICAL + 1, "NOTSET": logging.CRITICAL + 1, "CRITICAL": logging.CRITICAL,
           "ERROR": logging.ERROR, "WARN": logging.WARNING, "WARNING": logging.WARNING,
           "INFO": logging.INFO, "DEBUG": logging.DEBUG, "TRACE": 5}


def log_level(level: Union[str, int] = "INFO") -> None:
    """Forwards burrow's Rust logs at ``level`` and above to ``logging.getLogger("burrow")``.

    ``level`` is a name (``"TRACE"``, ``"DEBUG"``, ``"INFO"``, ``"WARNING"``, ``"ERROR"``,
    ``"OFF"``) or a :mod:`logging` number. TRACE records use level 5. The records are
    delivered by a background thread, shortly after the event.
    """
    global _bridge_level
    if isinstance(level, int) and not isinstance(level, bool):
        name = next((n for n in ("TRACE", "DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
                     if level <= _LEVELS[n]), "OFF")
    else:
        name = str(level).upper()
    if name not in _LEVELS:
        raise _error("INVALID_OPTION", f"log level {level!r} is not one of {', '.join(_LEVELS)}")
    _burrow.set_log_level(name)
    _bridge_level = _LEVELS[name]
    if _bridge_level <= logging.CRITICAL:
        _log.setLevel(_bridge_level)


# --- the in-process edge -------------------------------------------------------------

class Edge:
    """An edge running in this process, for tests and local use (a context manager).

    Keyword arguments are the edge config file's keys, e.g.
    ``Edge(authtokens=[{"token": "t", "domains": ["*.example.test"]}])``; with none,
    an open edge on loopback: random ports, any token, TCP ports from the OS.
    """

    def __init__(self, **config: Any) -> None:
        self._native = _burrow.NativeEdge.start(json.dumps(config))

    @property
    def tunnel_addr(self) -> str:
        """Where agents connect (``host:port``): pass it as ``server_addr``."""
        return self._native.tunnel_addr()

    @property
    def tls_addr(self) -> str:
        """The public TLS listener (``host:port``)."""
        return self._native.tls_addr()

    @property
    def tls_port(self) -> int:
        """The port of :attr:`tls_addr`."""
        return int(self.tls_addr.rsplit(":", 1)[1])

    @property
    def ca_pem(self) -> str:
        """The edge's CA (PEM): pass it as ``root_cas``; it also signs automatic certificates."""
        return self._native.ca_pem()

    def options(self) -> Dict[str, Any]:
        """Session options that point a :func:`forward` at this edge."""
        return {"server_addr": self.tunnel_addr, "root_cas": self.ca_pem}

    def close(self) -> None:
        """Stops the edge; calling it again does nothing."""
        self._native.close()

    def __enter__(self) -> "Edge":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<burrow.Edge tunnel={self.tunnel_addr} tls={self.tls_addr}>"


# --- builders (as ngrok's) -----------------------------------------------------------

def _loop_aware(blocking: Callable[[], Any], awaitable: Callable[[], Any]) -> Any:
    """``blocking()`` with no running loop in this thread, else the awaitable (as ngrok's)."""
    return awaitable() if _in_running_loop() else blocking()


class Session:
    """A session made by :class:`SessionBuilder`; closed by :meth:`close` or on exit of ``with``."""

    def __init__(self, native: "_burrow.NativeSession") -> None:
        self._native = native

    def id(self) -> str:
        """The session id the edge gave."""
        return self._native.id()

    def tls_endpoint(self) -> "TlsEndpointBuilder":
        """Starts building a TLS (SNI-routed) endpoint."""
        return TlsEndpointBuilder(self, "tls")

    def tcp_endpoint(self) -> "TcpEndpointBuilder":
        """Starts building a TCP endpoint on a port of its own."""
        return TcpEndpointBuilder(self, "tcp")

    def close(self) -> None:
        """Closes every endpoint of this session and the tunnel (idempotent)."""
        self._native.close()

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SessionBuilder:
    """ngrok-style session builder: ``SessionBuilder().authtoken_from_env().connect()``."""

    def __init__(self) -> None:
        self._opts: Dict[str, Any] = {}

    def authtoken(self, token: str) -> "SessionBuilder":
        """The authtoken presented to the edge."""
        self._opts["authtoken"] = token
        return self

    def authtoken_from_env(self) -> "SessionBuilder":
        """Reads the authtoken from ``BURROW_AUTHTOKEN``, then ``NGROK_AUTHTOKEN``."""
        self._opts["authtoken_from_env"] = True
        return self

    def server_addr(self, addr: str) -> "SessionBuilder":
        """The edge's tunnel address; without one an embedded edge starts in-process."""
        self._opts["server_addr"] = addr
        return self

    def root_cas(self, pem: Pem) -> "SessionBuilder":
        """CA bundle the edge's tunnel certificate must chain to."""
        self._opts["root_cas"] = pem
        return self

    def ca_cert(self, pem: Pem) -> "SessionBuilder":
        """ngrok's name for :meth:`root_cas`."""
        return self.root_cas(pem)

    def metadata(self, metadata: str) -> "SessionBuilder":
        """Free-form session metadata sent to the edge."""
        self._opts["session_metadata"] = metadata
        return self

    def connect(self) -> Any:
        """Connects: returns the :class:`Session`, or an awaitable of it inside a running loop."""
        opts = _parse("session", dict(self._opts))

        async def connect_async() -> Session:
            return Session(await _burrow.NativeSession.connect_async(opts))

        return _loop_aware(lambda: Session(_burrow.NativeSession.connect(opts)), connect_async)


class _EndpointBuilder:
    def __init__(self, session: Session, proto: str) -> None:
        self._session = session
        self._opts: Dict[str, Any] = {"proto": proto}

    def _set(self, key: str, value: Any) -> Any:
        self._opts[key] = value
        return self

    def metadata(self, metadata: str) -> Any:
        """The endpoint's metadata."""
        return self._set("metadata", metadata)

    def forwards_to(self, to: str) -> Any:
        """A description of the upstream, reported by :meth:`Listener.forwards_to`."""
        return self._set("forwards_to", to)

    def termination(self, crt: Pem, key: Pem) -> Any:
        """The edge terminates TLS with this certificate and key."""
        self._opts.update(crt=crt, key=key, terminate_at="edge")
        return self

    def agent_termination(self, crt: Pem, key: Pem) -> Any:
        """The agent (this process) terminates TLS with this certificate and key."""
        self._opts.update(crt=crt, key=key, terminate_at="agent")
        return self

    def mutual_tlsca(self, ca: Pem) -> Any:
        """Clients must present a certificate from this CA bundle."""
        return self._set("mutual_tls_cas", ca)

    def traffic_policy(self, policy: str) -> Any:
        """A traffic policy (YAML or JSON)."""
        return self._set("traffic_policy", policy)

    def proxy_proto(self, version: str) -> Any:
        """Send a PROXY protocol header (``"1"`` or ``"2"``) to the upstream."""
        return self._set("proxy_proto", version)

    def allow_cidr(self, cidr: str) -> Any:
        """Accept clients from this network only (repeatable)."""
        self._opts.setdefault("allow_cidr", []).append(cidr)
        return self

    def deny_cidr(self, cidr: str) -> Any:
        """Refuse clients from this network (repeatable)."""
        self._opts.setdefault("deny_cidr", []).append(cidr)
        return self

    def verify_upstream_tls(self, verify: bool) -> Any:
        """Whether a ``tls://`` upstream's certificate is checked (default True)."""
        return self._set("verify_upstream_tls", verify)

    def listen_and_forward(self, url: Union[str, int]) -> Any:
        """Binds and forwards to ``url``: the :class:`Listener`, or an awaitable of it inside a loop."""
        opts = _parse("endpoint", {**self._opts, "addr": url})
        native = self._session._native

        async def forward_async() -> Listener:
            return Listener(await native.forward_async(opts))

        return _loop_aware(lambda: Listener(native.forward(opts)), forward_async)


class TlsEndpointBuilder(_EndpointBuilder):
    """Builds a TLS endpoint."""

    def domain(self, domain: str) -> "TlsEndpointBuilder":
        """The endpoint's host name."""
        return self._set("domain", domain)


class TcpEndpointBuilder(_EndpointBuilder):
    """Builds a TCP endpoint."""

    def remote_addr(self, addr: str) -> "TcpEndpointBuilder":
        """The public ``host:port`` to ask for."""
        return self._set("remote_addr", addr)
