"""HTTP endpoints (ngrok's default) with real web apps and a real HTTP client:
http.server through ``burrow.listen(server)``, Flask through ``werkzeug_develop()``,
aiohttp serving the listener as its socket, the ``HttpListenerBuilder``, basic auth,
headers, and the seed example rewritten for HTTP. Every socket is on loopback; the
client resolves the endpoint's name to 127.0.0.1 itself (see :func:`get`)."""

from __future__ import annotations

import asyncio
import base64
import http.client
import http.server
import os
import socket
import ssl
import threading
import urllib.error
import urllib.request
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

import burrow

Response = Tuple[int, Dict[str, str], bytes]


class Hello(http.server.BaseHTTPRequestHandler):
    """Answers every GET with its path and the headers the edge sent upstream."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        body = "\n".join([f"path={self.path}"] + [f"{k.lower()}={v}" for k, v in self.headers.items()]).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("X-Upstream", "hello")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


class _Server:
    """An ``http.server`` in a thread, shut down at the end of the test."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.thread = threading.Thread(target=server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


@pytest.fixture
def hello() -> Iterator[http.server.ThreadingHTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    running = _Server(server)
    yield server
    running.close()


@pytest.fixture
def hello_unix(tmp_path: Any) -> Iterator[Any]:
    import socketserver

    class UnixHTTP(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True

    class UnixHello(Hello):
        def address_string(self) -> str:  # a unix peer has no (host, port)
            return "unix"

    server = UnixHTTP(str(tmp_path / "app.sock"), UnixHello)
    running = _Server(server)
    yield server
    running.close()


def _split(url: str) -> Tuple[str, int]:
    assert url.startswith("https://"), url
    host, _, port = url[len("https://"):].rstrip("/").partition(":")
    return host, int(port or 443)


class _Loopback(http.client.HTTPSConnection):
    """Connects to 127.0.0.1 whatever the name, and sends the name as SNI and Host
    (what `curl --resolve NAME:PORT:127.0.0.1` does)."""

    def connect(self) -> None:
        raw = socket.create_connection(("127.0.0.1", self.port), self.timeout)
        self.sock = self._context.wrap_socket(raw, server_hostname=self.host)  # type: ignore[attr-defined]


def get(url: str, ca: str, path: str = "/", headers: Optional[Dict[str, str]] = None) -> Response:
    """GET ``url + path`` with urllib, trusting ``ca``; the status, headers and body."""
    ctx = ssl.create_default_context(cadata=ca)

    class Handler(urllib.request.HTTPSHandler):
        def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(_Loopback, req, context=ctx)  # type: ignore[return-value]

    opener = urllib.request.build_opener(Handler)
    req = urllib.request.Request(url.rstrip("/") + path, headers=headers or {})
    try:
        with opener.open(req, timeout=30) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def embedded_ca(listener: burrow.Listener) -> str:
    """The CA of the edge the module started in this process (no server address given)."""
    edge = listener._session.embedded_edge() if listener._session is not None else None
    assert edge is not None, "the listener's session has no embedded edge"
    return edge[2]


def lines(body: bytes) -> List[str]:
    return body.decode().splitlines()


def test_forward_defaults_to_http(edge: burrow.Edge, hello: http.server.ThreadingHTTPServer) -> None:
    port = hello.server_address[1]
    listener = burrow.forward(port, **edge.options())
    assert listener.proto() == "https"
    assert listener.url().startswith("https://")
    status, headers, body = get(listener.url(), edge.ca_pem, "/hi?x=1")
    assert status == 200 and headers["x-upstream"] == "hello"
    got = lines(body)
    assert "path=/hi?x=1" in got
    host, _ = _split(listener.url())
    assert any(g.startswith(f"x-forwarded-host={host}") for g in got), got
    assert "x-forwarded-proto=https" in got and "x-forwarded-for=127.0.0.1" in got


def test_basic_auth_401_then_200(edge: burrow.Edge, hello: http.server.ThreadingHTTPServer) -> None:
    listener = burrow.forward(hello.server_address[1], basic_auth=["ann:correct-horse"], **edge.options())
    status, headers, _ = get(listener.url(), edge.ca_pem)
    assert status == 401 and headers["www-authenticate"].lower().startswith("basic")
    assert headers["burrow-error-code"] and "correct-horse" not in str(headers)
    wrong = base64.b64encode(b"ann:wrong-horse!").decode()
    assert get(listener.url(), edge.ca_pem, headers={"Authorization": f"Basic {wrong}"})[0] == 401
    right = base64.b64encode(b"ann:correct-horse").decode()
    status, _, body = get(listener.url(), edge.ca_pem, headers={"Authorization": f"Basic {right}"})
    assert status == 200 and "path=/" in lines(body)


def test_http_builder_with_ngroks_names(edge: burrow.Edge, hello: http.server.ThreadingHTTPServer) -> None:
    session = burrow.SessionBuilder().server_addr(edge.tunnel_addr).root_cas(edge.ca_pem).connect()
    listener = (session.http_endpoint().domain("web.py.test").scheme("HTTPS").metadata("m")
                .basic_auth("ann", "correct-horse").request_header("X-Added", "yes")
                .remove_request_header("X-Secret").response_header("X-Resp", "1")
                .remove_response_header("X-Upstream").allow_cidr("127.0.0.0/8").deny_user_agent("^badbot")
                .forwards_to("hello").listen_and_serve(hello))
    assert listener.proto() == "https" and listener.url().startswith("https://web.py.test")
    assert listener.forwards_to() == "hello" and listener.metadata() == "m"
    auth = {"Authorization": "Basic " + base64.b64encode(b"ann:correct-horse").decode()}
    status, headers, body = get(listener.url(), edge.ca_pem, headers={**auth, "X-Secret": "s"})
    assert status == 200
    got = lines(body)
    assert "x-added=yes" in got and not any(g.startswith("x-secret=") for g in got)
    assert headers["x-resp"] == "1" and "x-upstream" not in headers
    status, headers, _ = get(listener.url(), edge.ca_pem, headers={**auth, "User-Agent": "badbot/1"})
    assert status == 403 and headers.get("ngrok-error-code") == "ERR_NGROK_3211"
    session.close()


def test_http_builder_refusals(edge: burrow.Edge) -> None:
    session = burrow.SessionBuilder().server_addr(edge.tunnel_addr).root_cas(edge.ca_pem).connect()
    with pytest.raises(burrow.Error) as e:
        session.http_endpoint().oauth("google")
    assert e.value.code == "UNSUPPORTED" and "oauth_provider" in e.value.message
    with pytest.raises(burrow.Error) as e:
        session.http_endpoint().oidc("https://id.example", "id", "secret")
    assert e.value.code == "UNSUPPORTED" and "oidc" in e.value.message
    with pytest.raises(burrow.Error) as e:
        session.http_endpoint().basic_auth("ann", "short").listen_and_forward(8080)
    assert e.value.code == "INVALID_OPTION" and "8 to 128" in e.value.message and "short" not in e.value.message
    with pytest.raises(burrow.Error) as e:
        session.http_endpoint().basic_auth("a:b", "long-enough").listen_and_forward(8080)
    assert e.value.code == "INVALID_OPTION" and "':'" in e.value.message
    with pytest.raises(burrow.Error) as e:
        session.http_endpoint().webhook_verification("twilio", "s3cret-s3cret").listen_and_forward(8080)
    assert e.value.code == "UNSUPPORTED" and "twilio" in e.value.message
    with pytest.raises(burrow.Error) as e:
        session.http_endpoint().app_protocol("spdy").listen_and_forward(8080)
    assert e.value.code == "INVALID_OPTION" and "app_protocol" in e.value.message
    session.close()


def test_listen_puts_an_http_server_behind_a_new_endpoint(hello: http.server.ThreadingHTTPServer) -> None:
    listener = burrow.listen(hello)
    assert listener.proto() == "https" and listener.forwards_to() == f"tcp://127.0.0.1:{hello.server_address[1]}"
    status, _, body = get(listener.url(), embedded_ca(listener), "/via-listen")
    assert status == 200 and "path=/via-listen" in lines(body)


def test_listen_with_a_unix_socket_server(hello_unix: Any) -> None:
    listener = burrow.listen(hello_unix)
    assert listener.forwards_to() == f"unix:{hello_unix.server_address}"
    status, _, body = get(listener.url(), embedded_ca(listener), "/unix")
    assert status == 200 and "path=/unix" in lines(body)


def test_listen_and_serve_and_getsockname(edge: burrow.Edge, hello: http.server.ThreadingHTTPServer) -> None:
    listener = burrow.default()
    name = listener.getsockname()
    assert isinstance(name, str) and name.endswith(".sock"), name  # a unix socket, as ngrok's
    burrow.listen(hello, listener)
    status, _, body = get(listener.url(), embedded_ca(listener), "/given")
    assert status == 200 and "path=/given" in lines(body)
    assert burrow.pipe_name() != burrow.pipe_name()


def test_flask_through_werkzeug_develop(monkeypatch: pytest.MonkeyPatch) -> None:
    flask = pytest.importorskip("flask")
    from werkzeug.serving import make_server

    for var in ("WERKZEUG_SERVER_FD", "WERKZEUG_RUN_MAIN"):
        monkeypatch.delenv(var, raising=False)
    app = flask.Flask("burrow_test")

    @app.route("/flask/<name>")
    def hi(name: str) -> Dict[str, str]:
        return {"hello": name, "proto": flask.request.headers.get("X-Forwarded-Proto", "")}

    listener = burrow.werkzeug_develop()
    fd = int(os.environ["WERKZEUG_SERVER_FD"])
    assert os.environ["WERKZEUG_RUN_MAIN"] == "true" and fd == listener.fileno()
    # What app.run() does when WERKZEUG_RUN_MAIN is set: serve on the inherited socket.
    server = make_server("127.0.0.1", 0, app, fd=fd)
    running = _Server(server)
    try:
        status, headers, body = get(listener.url(), embedded_ca(listener), "/flask/ann")
        assert status == 200 and headers["content-type"] == "application/json"
        import json
        assert json.loads(body) == {"hello": "ann", "proto": "https"}
    finally:
        running.close()


@pytest.mark.asyncio
async def test_aiohttp_serves_the_listener_as_its_socket(edge: burrow.Edge) -> None:
    web = pytest.importorskip("aiohttp.web")

    async def handle(request: Any) -> Any:
        return web.Response(text=f"aiohttp {request.path}")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    session = await burrow.SessionBuilder().server_addr(edge.tunnel_addr).root_cas(edge.ca_pem).connect()
    listener = await session.http_endpoint().listen()
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.SockSite(runner, listener).start()  # type: ignore[arg-type]
        status, _, body = await asyncio.to_thread(get, listener.url(), edge.ca_pem, "/aio")
        assert status == 200 and body == b"aiohttp /aio"
    finally:
        await runner.cleanup()
        await session.close()


@pytest.mark.asyncio
async def test_helpers_return_tasks_inside_a_loop(hello: http.server.ThreadingHTTPServer) -> None:
    task = burrow.listen(hello)
    assert isinstance(task, asyncio.Task)
    listener = await task
    status, _, _ = await asyncio.to_thread(get, listener.url(), embedded_ca(listener))
    assert status == 200
    name = await burrow.getsockname()
    assert isinstance(name, str) and name.endswith(".sock")


def test_edge_exposes_its_http_addr(hello: http.server.ThreadingHTTPServer) -> None:
    # An in-process edge has a plain-HTTP listener on loopback unless http_addr says
    # otherwise, like the embedded edge (Edge() with no keys).
    with burrow.Edge(open=True) as edge:
        assert edge.http_addr is not None
        host, port = edge.http_addr.rsplit(":", 1)
        assert host.startswith("127.")
        listener = burrow.forward(hello.server_address[1], url="http://plain.py.test", **edge.options())
        assert listener.proto() == "http" and listener.url().startswith("http://plain.py.test")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        try:
            conn.request("GET", "/plain", headers={"Host": "plain.py.test"})
            resp = conn.getresponse()
            assert resp.status == 200 and "path=/plain" in lines(resp.read())
        finally:
            conn.close()
            burrow.kill()
    with burrow.Edge(open=True, http_addr="127.0.0.2:0") as other:
        assert other.http_addr is not None and other.http_addr.startswith("127.0.0.2:")


SEED_HTTP = '''\
import burrow as ngrok

listener = ngrok.forward(8080, authtoken_from_env=True)

print(f"Ingress established at: {listener.url()}")
'''


def test_seed_example_for_http(capsys: pytest.CaptureFixture[str]) -> None:
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 8080), Hello)
    except OSError as e:
        pytest.fail(f"the example forwards localhost:8080, which is busy here: {e}")
    running = _Server(server)
    try:
        namespace: Dict[str, Any] = {"__name__": "__seed__"}
        exec(compile(SEED_HTTP, "seed-http", "exec"), namespace)
        listener = namespace["listener"]
        assert f"Ingress established at: {listener.url()}" in capsys.readouterr().out
        assert listener.url().startswith("https://") and listener.proto() == "https"
        status, _, body = get(listener.url(), embedded_ca(listener), "/seed")
        assert status == 200 and "path=/seed" in lines(body)
    finally:
        running.close()
