"""Runs the seed example "Cloud service" against burrow as installed in this interpreter
(a venv outside the repo) and carries bytes through the endpoint it makes.

Usage, from a directory outside the repo holding this file and seeds.py::

    python installed_seed.py REPO CERT_DIR

CERT_DIR holds what scripts/seed-certs.sh makes. The example runs as written apart from
the import (``import burrow as ngrok``), the certificate paths and the upstream port
(``localhost:8080`` -> a free port, so parallel runs cannot collide). Standard library
only; exits non-zero on any failure.
"""

from __future__ import annotations

import socket
import ssl
import sys
import threading
from pathlib import Path
from typing import Any, Dict

import burrow
from seeds import CLOUD_SERVICE


def echo_service() -> int:
    """A plain TCP echo service on 127.0.0.1, in a daemon thread; returns its port."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)

    def serve() -> None:
        while True:
            conn, _ = server.accept()
            with conn:
                try:
                    while data := conn.recv(65536):
                        conn.sendall(data)
                except OSError:
                    pass  # the client went away; the next one is served

    threading.Thread(target=serve, daemon=True).start()
    return int(server.getsockname()[1])


def main(repo: Path, certs: Path) -> None:
    where = Path(burrow.__file__).resolve()
    assert repo not in where.parents, f"burrow was imported from the repo ({where}), not an installed package"
    port = echo_service()
    source = (CLOUD_SERVICE.replace("import ngrok\n", "import burrow as ngrok\n", 1)
              .replace("/path/to/", f"{certs}/").replace("localhost:8080", f"localhost:{port}"))
    namespace: Dict[str, Any] = {"__name__": "__seed__"}
    exec(compile(source, "seed-example", "exec"), namespace)
    url = namespace["listener"].url()
    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    message = b"through the installed package"
    with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=30) as raw:
        with ctx.wrap_socket(raw, server_hostname="app.example.com") as conn:
            conn.sendall(message)
            got = b""
            while len(got) < len(message):
                more = conn.recv(len(message) - len(got))
                assert more, f"the endpoint closed after {len(got)} bytes"
                got += more
    assert got == message, got
    print(f"installed package ok: {where.parent} served {url}")


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve())
