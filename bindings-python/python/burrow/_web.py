"""ngrok's web-framework helpers: ``listen(server)``, ``werkzeug_develop()``,
``default()``, ``fd()``, ``getsockname()``, ``pipe_name()``.

Like ngrok's, each is loop-aware: with no running asyncio loop in this thread it blocks
and returns its result; inside a running loop it returns a :class:`asyncio.Task`.
Without a listener or session they open an HTTP endpoint on the module's shared
session (``authtoken_from_env``; with no server address, the embedded edge).
"""

from __future__ import annotations

import asyncio
import atexit
import os
import secrets
import tempfile
from typing import Any, Awaitable, Callable, Optional

from ._builders import Session
from ._listener import Listener
from ._options import _error, _parse
from ._sessions import _in_running_loop, _session_for, _session_for_async


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def pipe_name() -> str:
    """A fresh unix socket path in the temporary directory, removed at exit (ngrok's
    ``pipe_name``)."""
    path = os.path.join(tempfile.gettempdir(), f"burrow-{os.getpid()}-{secrets.token_hex(6)}.sock")
    atexit.register(_remove, path)
    return path


def _server_addr(server: Any) -> str:
    """Where ``server`` listens, as an upstream address: ``server.server_address`` is a
    ``(host, port)`` tuple (TCP) or a path (a unix socket)."""
    addr = getattr(server, "server_address", None)
    if isinstance(addr, tuple) and len(addr) >= 2:
        host, port = str(addr[0]) or "localhost", int(addr[1])
        return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"
    if isinstance(addr, bytes):
        addr = os.fsdecode(addr)
    if isinstance(addr, str) and addr:
        return f"unix:{addr}"
    raise _error("INVALID_OPTION",
                 f"the server's server_address {addr!r} is neither a (host, port) tuple nor a unix socket path")


def _default_opts() -> Any:
    return _parse("forward", {"authtoken_from_env": True, "proto": "http"})


def _default_listener(session: Optional[Session]) -> Listener:
    if session is not None:
        listener: Listener = session.http_endpoint().listen()
        return listener
    opts = _default_opts()
    native = _session_for(opts)
    return Listener(native.listen(opts), native)


async def _default_listener_async(session: Optional[Session]) -> Listener:
    if session is not None:
        listener: Listener = await session.http_endpoint().listen()
        return listener
    opts = _default_opts()
    native = await _session_for_async(opts)
    return Listener(await native.listen_async(opts), native)


def _loop_wrap(blocking: Callable[[], Any], work: Callable[[], Awaitable[Any]]) -> Any:
    """``blocking()`` with no running loop in this thread, else a Task running ``work()``
    (what ngrok's helpers return)."""
    if _in_running_loop():
        return asyncio.ensure_future(work())
    return blocking()


def default(session: Optional[Session] = None) -> Any:
    """A listening HTTP endpoint that forwards nowhere yet (a Task inside a loop)."""
    return _loop_wrap(lambda: _default_listener(session), lambda: _default_listener_async(session))


def fd(session: Optional[Session] = None) -> Any:
    """A new HTTP endpoint's local socket, listening, as a file descriptor (see
    :attr:`Listener.fd`); a Task of it inside a loop."""
    async def work() -> int:
        return (await _default_listener_async(session)).fd
    return _loop_wrap(lambda: _default_listener(session).fd, work)


def getsockname(session: Optional[Session] = None) -> Any:
    """A new HTTP endpoint's local socket name (a unix socket path, or a TCP address)."""
    async def work() -> Any:
        return (await _default_listener_async(session)).getsockname()
    return _loop_wrap(lambda: _default_listener(session).getsockname(), work)


def listen(server: Any = None, listener: Optional[Listener] = None) -> Any:
    """Puts ``server`` (anything with ``server_address``, e.g. ``http.server.HTTPServer``)
    behind ``listener``, or a new HTTP endpoint; returns the listener (a Task of it
    inside a loop). With no server, the listener is returned still listening."""
    target = _server_addr(server) if server is not None else None

    def blocking() -> Listener:
        l = listener if listener is not None else _default_listener(None)
        if target is not None:
            l.forward(target)
        return l

    async def work() -> Listener:
        l = listener if listener is not None else await _default_listener_async(None)
        if target is not None:
            await l.forward(target)
        return l

    return _loop_wrap(blocking, work)


def werkzeug_develop(listener: Optional[Listener] = None) -> Any:
    """Sets ``WERKZEUG_SERVER_FD`` to a listening socket an HTTP endpoint forwards to,
    and ``WERKZEUG_RUN_MAIN=true`` so werkzeug (``flask run``, ``app.run()``) serves
    on it; returns the listener (a Task of it inside a loop)."""
    def setup(l: Listener) -> Listener:
        os.environ["WERKZEUG_SERVER_FD"] = str(l.fd)
        os.environ["WERKZEUG_RUN_MAIN"] = "true"
        return l

    async def work() -> Listener:
        return setup(listener if listener is not None else await _default_listener_async(None))

    return _loop_wrap(lambda: setup(listener if listener is not None else _default_listener(None)), work)
