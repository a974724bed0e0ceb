"""An edge running in this process, for tests and local use."""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional

from . import _burrow


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
    def http_addr(self) -> Optional[str]:
        """The plain-HTTP listener (``host:port``) of http endpoints that serve
        ``schemes=["HTTP"]``; None when the edge has none. HTTPS is on :attr:`tls_addr`."""
        return self._native.http_addr()

    @property
    def admin_addr(self) -> Optional[str]:
        """The admin API (``host:port``) when ``admin_addr`` and ``admin_token`` are set."""
        return self._native.admin_addr()

    @property
    def metrics_addr(self) -> Optional[str]:
        """The Prometheus listener (``host:port``, ``GET /metrics``) when ``metrics_addr`` is set."""
        return self._native.metrics_addr()

    def metrics_text(self) -> str:
        """The edge's metrics in the OpenMetrics text format (what ``GET /metrics`` serves)."""
        return self._native.metrics_text()

    @property
    def ca_pem(self) -> str:
        """The edge's CA (PEM): pass it as ``root_cas``; it also signs automatic certificates."""
        return self._native.ca_pem()

    def options(self) -> Dict[str, Any]:
        """Session options that point a :func:`forward` at this edge."""
        return {"server_addr": self.tunnel_addr, "root_cas": self.ca_pem}

    def sessions(self) -> List[Dict[str, Any]]:
        """Authenticated sessions: ``{"id", "client_info", "metadata"}`` each."""
        return [{"id": i, "client_info": c, "metadata": m} for i, c, m in self._native.sessions()]

    def send_command(self, session_id: str, command: str, version: str = "",
                     permit_major_version: bool = False, reason: Optional[str] = None) -> None:
        """Sends ngrok's ``"stop"``, ``"restart"`` or ``"update"`` command to a session;
        raises the agent's refusal (e.g. ``UNSUPPORTED`` for an update nobody handles).
        ``reason`` goes with ``"stop"`` (the agent logs it; its stop hook may take it)."""
        self._native.send_command(session_id, command, version, permit_major_version, reason)

    def close(self) -> None:
        """Stops the edge; calling it again does nothing."""
        self._native.close()

    def __enter__(self) -> "Edge":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<burrow.Edge tunnel={self.tunnel_addr} tls={self.tls_addr}>"
