"""ngrok's builders: ``SessionBuilder().connect()``, then ``session.tls_endpoint()...``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, TypeVar, Union

from . import _burrow
from ._listener import Listener, _open_listeners
from ._options import _parse
from ._sessions import _done, _in_running_loop, _loop_aware

Pem = Union[bytes, bytearray, str, Path]
_B = TypeVar("_B", bound="_EndpointBuilder")


class Session:
    """A session made by :class:`SessionBuilder`; closed by :meth:`close` or on exit of ``with``."""

    def __init__(self, native: "_burrow.NativeSession") -> None:
        self._native = native

    def id(self) -> str:
        """The session id the edge gave."""
        return self._native.id()

    def metrics_text(self) -> str:
        """The session's Prometheus metrics in text format: connections, bytes, upstream
        dials per endpoint, heartbeat round trips, reconnects."""
        return self._native.metrics_text()

    def status(self) -> Dict[str, Any]:
        """The session now: ``status``, ``edges``, ``heartbeat_ms``, ``endpoints`` (each
        with ngrok's ``conns`` counters and bytes) and the ``recent`` connections; the
        same JSON as the agent API's ``GET /api/status``."""
        result: Dict[str, Any] = json.loads(self._native.status_json())
        return result

    def http_endpoint(self) -> "HttpListenerBuilder":
        """Starts building an HTTP endpoint (an ``https://`` URL; the edge terminates TLS
        and proxies requests)."""
        return HttpListenerBuilder(self, "http")

    def tls_endpoint(self) -> "TlsEndpointBuilder":
        """Starts building a TLS (SNI-routed) endpoint."""
        return TlsEndpointBuilder(self, "tls")

    def tcp_endpoint(self) -> "TcpEndpointBuilder":
        """Starts building a TCP endpoint on a port of its own."""
        return TcpEndpointBuilder(self, "tcp")

    def get_listeners(self) -> List[Listener]:
        """This session's open listeners (ngrok's ``Session.get_listeners``)."""
        return [x for x in _open_listeners() if x._session is self._native]

    def close_listener(self, id: str) -> Any:
        """Closes this session's listener with ``id`` (ngrok's ``Session.close_listener``).
        Returns None, or inside a running loop an awaitable (closed either way)."""
        for listener in self.get_listeners():
            if listener.id() == id:
                listener._close()
        return _done(None)

    def close(self) -> Any:
        """Closes every endpoint of this session and the tunnel (idempotent). Returns
        None, or inside a running loop an awaitable that resolves once closed."""
        for listener in self.get_listeners():
            listener._close()
        if _in_running_loop():
            return self._native.close_async()
        self._native.close()
        return None

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: object) -> None:
        for listener in self.get_listeners():
            listener._close()
        self._native.close()


class SessionBuilder:
    """ngrok-style session builder: ``SessionBuilder().authtoken_from_env().connect()``."""

    def __init__(self) -> None:
        self._opts: Dict[str, Any] = {}
        self._extras: Dict[str, Any] = {"client_info": []}

    def authtoken(self, token: str) -> "SessionBuilder":
        """The authtoken presented to the edge."""
        self._opts["authtoken"] = token
        return self

    def authtoken_from_env(self) -> "SessionBuilder":
        """Reads the authtoken from ``BURROW_AUTHTOKEN``, then ``NGROK_AUTHTOKEN``."""
        self._opts["authtoken_from_env"] = True
        return self

    def server_addr(self, addr: Union[str, Sequence[str]]) -> "SessionBuilder":
        """The edge's tunnel address, or several (a list, or separated by commas): the
        session then holds a connection to each edge; without one an embedded edge
        starts in-process."""
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

    def client_info(self, client_type: str, version: str, comments: Optional[str] = None) -> "SessionBuilder":
        """Identifies the application to the edge, which logs it; the latest call is the
        most significant entry."""
        self._extras["client_info"].append((client_type, version, comments))
        return self

    def heartbeat_interval(self, heartbeat_interval: float) -> "SessionBuilder":
        """Seconds between heartbeats (ngrok takes whole seconds; fractions work too)."""
        self._extras["heartbeat_interval"] = heartbeat_interval
        return self

    def heartbeat_tolerance(self, heartbeat_tolerance: float) -> "SessionBuilder":
        """Seconds a heartbeat may go unanswered before the session reconnects."""
        self._extras["heartbeat_tolerance"] = heartbeat_tolerance
        return self

    def handle_heartbeat(self, handler: Callable[[int], Any]) -> "SessionBuilder":
        """``handler(latency_ms)`` after each answered heartbeat (called from another thread)."""
        self._extras["handle_heartbeat"] = handler
        return self

    def handle_disconnection(self, handler: Callable[[str, str], Any]) -> "SessionBuilder":
        """``handler(addr, error)`` each time the tunnel is lost or a reconnect fails;
        raising (or returning False) stops reconnecting and closes the session."""
        self._extras["handle_disconnection"] = handler
        return self

    def handle_stop_command(
            self, handler: Union[Callable[[], Any], Callable[[Optional[str]], Any]]) -> "SessionBuilder":
        """``handler()`` when the edge asks the session to stop, instead of closing it;
        an exception is reported to the edge. A handler that takes a positional
        parameter gets the operator's reason (a str, or None when none was given)."""
        self._extras["handle_stop_command"] = handler
        return self

    def handle_restart_command(self, handler: Callable[[], Any]) -> "SessionBuilder":
        """``handler()`` when the edge asks for a restart, instead of reconnecting."""
        self._extras["handle_restart_command"] = handler
        return self

    def handle_update_command(self, handler: Callable[[str, bool], Any]) -> "SessionBuilder":
        """``handler(version, permit_major_version)`` when the edge asks for an update
        (refused with ``UNSUPPORTED`` without one)."""
        self._extras["handle_update_command"] = handler
        return self

    def connect(self) -> Any:
        """Connects: returns the :class:`Session`, or an awaitable of it inside a running loop."""
        opts = _parse("session", dict(self._opts))
        extras = dict(self._extras, client_info=list(self._extras["client_info"]))

        async def connect_async() -> Session:
            return Session(await _burrow.NativeSession.connect_async(opts, extras))

        return _loop_aware(lambda: Session(_burrow.NativeSession.connect(opts, extras)), connect_async)


class _EndpointBuilder:
    def __init__(self, session: Session, proto: str) -> None:
        self._session = session
        self._opts: Dict[str, Any] = {"proto": proto}

    def _set(self: _B, key: str, value: Any) -> _B:
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

    def policy(self, policy: str) -> Any:
        """ngrok's other name for :meth:`traffic_policy`."""
        return self.traffic_policy(policy)

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

    def pooling_enabled(self, pooling_enabled: bool) -> Any:
        """Share the name with other agents' endpoints that enable pooling too (ngrok's
        ``pooling_enabled``): the edge spreads connections across them."""
        return self._set("pooling_enabled", pooling_enabled)

    def listen_and_forward(self, url: Union[str, int]) -> Any:
        """Binds and forwards to ``url``: the :class:`Listener`, or an awaitable of it inside a loop."""
        opts = _parse("endpoint", {**self._opts, "addr": url})
        native = self._session._native

        async def forward_async() -> Listener:
            return Listener(await native.forward_async(opts), native)

        return _loop_aware(lambda: Listener(native.forward(opts), native), forward_async)

    def listen_and_serve(self, server: Any) -> Any:
        """Binds and forwards to ``server.server_address`` (an ``http.server`` or
        ``socketserver`` server: a ``(host, port)`` tuple, or a unix socket path)."""
        from ._web import _server_addr
        return self.listen_and_forward(_server_addr(server))

    def listen(self) -> Any:
        """Binds without a forwarding target (ngrok's ``listen()``); start forwarding with
        :meth:`Listener.forward`. The :class:`Listener`, or an awaitable of it in a loop."""
        opts = _parse("endpoint", dict(self._opts))
        native = self._session._native

        async def listen_async() -> Listener:
            return Listener(await native.listen_async(opts), native)

        return _loop_aware(lambda: Listener(native.listen(opts), native), listen_async)


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


def _append(builder: _B, key: str, value: str) -> _B:
    builder._opts.setdefault(key, []).append(value)
    return builder


def _no_colon(what: str, value: str) -> None:
    # ngrok's option strings are "a:b"; a ':' in the first half would move the split.
    if ":" in value:
        from ._options import _error
        raise _error("INVALID_OPTION", f"{what} {value!r} must not contain ':'")


class HttpListenerBuilder(_EndpointBuilder):
    """Builds an HTTP endpoint (ngrok's ``HttpListenerBuilder``): every setting goes to
    the core's option parser under ngrok's option name when the endpoint is bound."""

    def domain(self, domain: str) -> "HttpListenerBuilder":
        """The endpoint's host name."""
        return self._set("domain", domain)

    def scheme(self, scheme: str) -> "HttpListenerBuilder":
        """A scheme to serve, ``"HTTPS"`` (the default) or ``"HTTP"`` (repeatable)."""
        return _append(self, "schemes", scheme)

    def basic_auth(self, username: str, password: str) -> "HttpListenerBuilder":
        """Clients must send these credentials (repeatable); the password takes 8 to 128
        characters."""
        _no_colon("basic_auth: the user name", username)
        return _append(self, "basic_auth", f"{username}:{password}")

    def allow_user_agent(self, regex: str) -> "HttpListenerBuilder":
        """Accept only clients whose User-Agent matches (repeatable)."""
        return _append(self, "allow_user_agent", regex)

    def deny_user_agent(self, regex: str) -> "HttpListenerBuilder":
        """Refuse clients whose User-Agent matches, with 403 (repeatable)."""
        return _append(self, "deny_user_agent", regex)

    def app_protocol(self, app_protocol: str) -> "HttpListenerBuilder":
        """How the edge speaks to the upstream: ``"http1"`` or ``"http2"``."""
        return self._set("app_protocol", app_protocol)

    def circuit_breaker(self, circuit_breaker: float) -> "HttpListenerBuilder":
        """Answer 503 while this fraction of responses are 5xx (0..1)."""
        return self._set("circuit_breaker", circuit_breaker)

    def compression(self) -> "HttpListenerBuilder":
        """Compress responses (gzip or brotli, by ``Accept-Encoding``)."""
        return self._set("compression", True)

    def request_header(self, name: str, value: str) -> "HttpListenerBuilder":
        """Add a header to every request sent upstream (repeatable)."""
        _no_colon("request_header: the header name", name)
        return _append(self, "request_header_add", f"{name}:{value}")

    def response_header(self, name: str, value: str) -> "HttpListenerBuilder":
        """Add a header to every response (repeatable)."""
        _no_colon("response_header: the header name", name)
        return _append(self, "response_header_add", f"{name}:{value}")

    def remove_request_header(self, name: str) -> "HttpListenerBuilder":
        """Remove a header from every request sent upstream (repeatable)."""
        return _append(self, "request_header_remove", name)

    def remove_response_header(self, name: str) -> "HttpListenerBuilder":
        """Remove a header from every response (repeatable)."""
        return _append(self, "response_header_remove", name)

    def host_header(self, host: str) -> "HttpListenerBuilder":
        """The ``Host`` header sent upstream instead of the client's."""
        return self._set("host_header", host)

    def webhook_verification(self, provider: str, secret: str) -> "HttpListenerBuilder":
        """Verify the signature of ``provider`` (``"github"``, ``"stripe"``, ``"slack"``)
        made with ``secret`` on every request (403 otherwise)."""
        self._opts.update(verify_webhook_provider=provider, verify_webhook_secret=secret)
        return self

    def websocket_tcp_conversion(self) -> "HttpListenerBuilder":
        """Accept websockets and hand the upstream a byte stream of their messages."""
        return self._set("websocket_tcp_converter", True)

    def oauth(self, provider: str, allow_emails: Optional[List[str]] = None,
              allow_domains: Optional[List[str]] = None, scopes: Optional[List[str]] = None,
              client_id: Optional[str] = None, client_secret: Optional[str] = None) -> "HttpListenerBuilder":
        """ngrok's OAuth: refused with ``UNSUPPORTED`` (the core says why)."""
        _parse("endpoint", {"proto": "http", "oauth_provider": provider})
        return self  # (not reached: the core refuses oauth_provider)

    def oidc(self, issuer_url: str, client_id: str, client_secret: str,
             allow_emails: Optional[List[str]] = None, allow_domains: Optional[List[str]] = None,
             scopes: Optional[List[str]] = None) -> "HttpListenerBuilder":
        """ngrok's OIDC: refused with ``UNSUPPORTED`` (the core says why)."""
        _parse("endpoint", {"proto": "http", "oidc_issuer_url": issuer_url})
        return self  # (not reached: the core refuses oidc_issuer_url)
