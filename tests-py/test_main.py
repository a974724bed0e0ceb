"""``python -m burrow {uvicorn|gunicorn} ...`` (ngrok's ``python -m ngrok`` shape): the
endpoint forwards to where the server listens, and the server runs with the rest of the
arguments. Each run is a child process, stopped (by its pid) at the end of the test."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator, List

import pytest

import burrow

from conftest import free_port
from test_web import get

ASGI_APP = '''\
async def app(scope, receive, send):
    assert scope["type"] == "http"
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": ("asgi " + scope["path"]).encode()})
'''

WSGI_APP = '''\
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [("wsgi " + environ["PATH_INFO"]).encode()]
'''


class Child:
    """A ``python -m burrow`` process whose stdout lines are collected by a thread."""

    def __init__(self, args: List[str], cwd: Path) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("BURROW_SERVER_ADDR", "BURROW_AUTHTOKEN")}
        self.proc = subprocess.Popen([sys.executable, "-m", "burrow", *args], cwd=cwd, env=env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.lines: List[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if text in line:
                    return line
            if self.proc.poll() is not None and not self.reader.is_alive():
                break
            time.sleep(0.05)
        raise AssertionError(f"no line with {text!r}; output so far:\n" + "\n".join(self.lines))

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(20)
        self.reader.join(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def children() -> Iterator[List[Child]]:
    started: List[Child] = []
    yield started
    for c in started:
        c.stop()


def url_of(child: Child) -> str:
    return child.wait_for("Forwarding https://").split()[1]


def test_uvicorn(edge: burrow.Edge, tmp_path: Path, children: List[Child]) -> None:
    pytest.importorskip("uvicorn")
    (tmp_path / "asgi_app.py").write_text(ASGI_APP)
    (tmp_path / "ca.pem").write_text(edge.ca_pem)
    port = free_port()
    child = Child(["uvicorn", "--server-addr", edge.tunnel_addr, "--root-cas", "ca.pem",
                   "--basic-auth", "ann", "correct-horse", "--host", "127.0.0.1", "--port", str(port),
                   "asgi_app:app"], tmp_path)
    children.append(child)
    url = url_of(child)
    assert child.lines[0].endswith(f"-> tcp://127.0.0.1:{port}"), child.lines
    child.wait_for("Uvicorn running on")
    assert get(url, edge.ca_pem, "/x")[0] == 401, "the endpoint's basic auth applies"
    auth = {"Authorization": "Basic " + base64.b64encode(b"ann:correct-horse").decode()}
    status, _, body = get(url, edge.ca_pem, "/x", headers=auth)
    assert status == 200 and body == b"asgi /x"


def test_gunicorn_on_a_unix_socket(edge: burrow.Edge, tmp_path: Path, children: List[Child]) -> None:
    pytest.importorskip("gunicorn")
    (tmp_path / "wsgi_app.py").write_text(WSGI_APP)
    (tmp_path / "ca.pem").write_text(edge.ca_pem)
    sock = tmp_path / "g.sock"
    child = Child(["gunicorn", "--server-addr", edge.tunnel_addr, "--root-cas", "ca.pem",
                   "-b", f"unix:{sock}", "--workers", "1", "wsgi_app:app"], tmp_path)
    children.append(child)
    url = url_of(child)
    assert child.lines[0].endswith(f"-> unix:{sock}"), child.lines
    child.wait_for("Booting worker")
    status, _, body = get(url, edge.ca_pem, "/y")
    assert status == 200 and body == b"wsgi /y"


def test_refusals_exit_with_the_code(edge: burrow.Edge, tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text(edge.ca_pem)
    done = subprocess.run([sys.executable, "-m", "burrow", "uvicorn", "--basic-auth", "ann", "short",
                           "--server-addr", edge.tunnel_addr, "--root-cas", "ca.pem", "app:app"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "INVALID_OPTION" in done.stderr and "short" not in done.stderr
    done = subprocess.run([sys.executable, "-m", "burrow", "uvicorn", "--fd", "3", "app:app"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "file descriptor" in done.stderr
