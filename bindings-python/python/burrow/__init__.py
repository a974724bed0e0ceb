"""burrow: put a local service on a public ``https://`` (or ``tls://``, ``tcp://``) address.

Mirrors ngrok's Python SDK, so ``import burrow as ngrok`` works::

    listener = burrow.forward("localhost:8080", domain="app.example.com")  # https://
    print(listener.url())

Goes further: ``terminate_at="agent"`` (the agent terminates TLS with your crt/key),
an in-process :class:`Edge` for tests, and errors for unknown options.

Lifetime rule: a :class:`Listener` runs until :meth:`Listener.close`,
:func:`disconnect` or :func:`kill`. The module keeps a reference to every open
listener (see :func:`get_listeners`), so dropping yours never stops a forward.
"""

from __future__ import annotations

from . import _state
from ._burrow import (
    AuthError,
    BindError,
    CertificateError,
    ConnectionError,
    Error,
    PolicyError,
)
from ._builders import (
    HttpListenerBuilder, Pem, Session, SessionBuilder, TcpEndpointBuilder, TlsEndpointBuilder,
)
from ._edge import Edge
from ._listener import Listener, async_forward, connect, disconnect, forward, get_listeners, kill
from ._logging import log_level
from ._sessions import _all_sessions
from ._web import default, fd, getsockname, listen, pipe_name, werkzeug_develop

__all__ = [
    "AuthError", "BindError", "CertificateError", "ConnectionError", "Edge", "Error",
    "HttpListenerBuilder", "Listener", "PolicyError", "Session", "SessionBuilder", "TcpEndpointBuilder",
    "TlsEndpointBuilder", "async_forward", "connect", "disconnect", "forward",
    "get_listeners", "kill", "log_level", "set_auth_token", "default", "fd", "getsockname",
    "listen", "pipe_name", "werkzeug_develop",
]


def set_auth_token(token: str) -> None:
    """The authtoken used when a call passes none."""
    _state.auth_token = token
