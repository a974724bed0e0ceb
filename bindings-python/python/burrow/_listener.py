"""Listeners and the module-level calls over them: forward, get_listeners,
disconnect, kill."""

from __future__ import annotations

import asyncio
import socket
from typing import Any, List, Optional, Union

from . import _burrow, _state
from ._options import _forward_options, _parse
from ._sessions import _all_sessions, _done, _in_running_loop, _session_for, _session_for_async, _sessions


class Listener:
    """A forwarding endpoint.

    It keeps running until :meth:`close`, :func:`disconnect` or :func:`kill`; dropping
    the last reference does not stop it (the module keeps one, see :func:`get_listeners`).
    """

    def __init__(self, native: "_burrow.NativeListener",
                 session: Optional["_burrow.NativeSession"] = None) -> None:
        self._native = native
        self._session = session
        self._socket: Optional[socket.socket] = None  # the local socket of fd / getsockname
        self._socket_forwarded = False
        with _state.lock:
            _state.listeners[native.id()] = self

    def id(self) -> str:
        """The endpoint id the edge gave."""
        return self._native.id()

    def url(self) -> str:
        """The public URL, e.g. ``tls://app.example.com:443`` or ``tcp://host:port``."""
        return self._native.url()

    def proto(self) -> str:
        """``"http"``, ``"tls"`` or ``"tcp"``."""
        return self._native.proto()

    def metadata(self) -> str:
        """The endpoint's metadata."""
        return self._native.metadata()

    def forwards_to(self) -> str:
        """The upstream this endpoint forwards to (empty for a :meth:`listen` one until
        :meth:`forward`)."""
        return self._native.forwards_to()

    def forward(self, addr: Union[str, int]) -> Any:
        """Starts forwarding a listener made by ``listen()`` to ``addr`` (ngrok's
        ``Listener.forward``). Returns None, or inside a running loop an awaitable (the
        forwarding has started either way)."""
        self._native.forward(_parse("endpoint", {"addr": addr, "proto": self.proto()}))
        return _done(None)

    def terminate_at(self) -> str:
        """Where TLS is terminated: ``"edge"``, ``"agent"`` or ``"upstream"``."""
        return self._native.terminate_at()

    def close(self) -> Any:
        """Stops the endpoint; calling it again does nothing. Returns None, or inside a
        running loop an awaitable, as ngrok's (the endpoint is closed either way)."""
        self._close()
        return _done(None)

    # A listener made by listen() acts like a listening socket (as ngrok's does), so a
    # server that takes a socket or a file descriptor (werkzeug, uvicorn, aiohttp) can
    # serve it: a local socket (a unix socket, else 127.0.0.1:0) is bound on first use
    # and the endpoint forwards to it once it listens.

    def _local_socket(self) -> socket.socket:
        if self._socket is None:
            try:
                from ._web import pipe_name
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    sock.bind(pipe_name())
                except OSError:
                    sock.close()
                    raise
            except (AttributeError, OSError):  # no unix sockets here
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.bind(("127.0.0.1", 0))
            self._socket = sock
        return self._socket

    def listen(self, backlog: int = 0) -> None:
        """Makes the local socket listen and forwards the endpoint to it (once)."""
        sock = self._local_socket()
        sock.listen(backlog)
        if not self._socket_forwarded:
            name = sock.getsockname()
            if sock.family == getattr(socket, "AF_UNIX", None):
                self._native.forward(_parse("endpoint", {"addr": f"unix:{name}", "proto": self.proto()}))
            else:
                self._native.forward(_parse("endpoint", {"addr": f"127.0.0.1:{name[1]}", "proto": self.proto()}))
            self._socket_forwarded = True

    @property
    def fd(self) -> int:
        """The local socket's file descriptor, listening, with the endpoint forwarding to
        it (ngrok's ``Listener.fd``, e.g. for ``uvicorn --fd``)."""
        self.listen(0)
        return self._local_socket().fileno()

    def fileno(self) -> int:
        """The local socket's file descriptor."""
        return self._local_socket().fileno()

    def getsockname(self) -> Any:
        """The local socket's name: a unix socket path, or a ``(host, port)`` tuple."""
        return self._local_socket().getsockname()

    @property
    def family(self) -> int:
        """The local socket's address family."""
        return int(self._local_socket().family)

    @property
    def type(self) -> int:
        """The local socket's type (``SOCK_STREAM``)."""
        return int(self._local_socket().type)

    def setblocking(self, flag: bool) -> None:
        """Sets the local socket's blocking mode."""
        self._local_socket().setblocking(flag)

    def gettimeout(self) -> Optional[float]:
        """The local socket's timeout."""
        return self._local_socket().gettimeout()

    def accept(self) -> Any:
        """Accepts a connection on the local socket (the endpoint's clients)."""
        return self._local_socket().accept()

    def _close(self) -> None:
        self._native.close()
        if self._socket is not None:
            self._socket.close()
        with _state.lock:
            _state.listeners.pop(self.id(), None)

    def join(self) -> None:
        """Blocks until the endpoint is closed (the GIL is released; Ctrl-C interrupts)."""
        self._native.join()

    async def async_join(self) -> None:
        """Waits until the endpoint is closed."""
        await self._native.join_async()

    def __enter__(self) -> "Listener":
        return self

    def __exit__(self, *exc: object) -> None:
        self._close()

    async def __aenter__(self) -> "Listener":
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._close()

    def __repr__(self) -> str:
        return f"<burrow.Listener {self.url()} terminate_at={self.terminate_at()}>"


async def async_forward(addr: Any = None, proto: Optional[str] = None, **options: Any) -> Listener:
    """Like :func:`forward`, always awaitable."""
    opts = _forward_options(addr, proto, options)
    session = await _session_for_async(opts)
    return Listener(await session.forward_async(opts), session)


def forward(addr: Any = None, proto: Optional[str] = None, **options: Any) -> Any:
    """Puts ``addr`` (``8080``, ``"host:port"``, ``"tcp://…"``, ``"tls://…"``) behind a public endpoint.

    Blocks and returns a :class:`Listener` when no asyncio loop runs in this thread;
    inside a running loop returns an awaitable, as ngrok's SDK does.
    """
    if _in_running_loop():
        return async_forward(addr, proto, **options)
    opts = _forward_options(addr, proto, options)
    session = _session_for(opts)
    return Listener(session.forward(opts), session)


connect = forward


def _open_listeners() -> List[Listener]:
    with _state.lock:
        return list(_state.listeners.values())


def get_listeners() -> Any:
    """Every open listener made through this module; inside a running loop, an awaitable
    of that list (as ngrok's)."""
    return _done(_open_listeners())


def disconnect(url: Optional[str] = None) -> Any:
    """Closes the listener with this URL, or every listener when ``url`` is None.
    Returns None, or inside a running loop an awaitable (closed either way)."""
    for listener in _open_listeners():
        if url is None or listener.url() == url:
            listener._close()
    return _done(None)


def kill() -> Any:
    """Closes every listener and every session this module opened. Returns None, or
    inside a running loop an awaitable that resolves once the sessions are closed."""
    disconnect()
    with _state.lock:
        sessions = list(_all_sessions)
        _all_sessions.clear()
        _sessions.clear()
    if _in_running_loop():
        return asyncio.gather(*[s.close_async() for s in sessions])
    for s in sessions:
        s.close()
    return None
