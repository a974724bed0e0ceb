"""mypy --strict accepts a script that uses the whole public surface."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SAMPLE = '''
import asyncio
import http.server
from pathlib import Path
from typing import List
import burrow

def main(edge: burrow.Edge) -> None:
    l1: burrow.Listener = burrow.forward(8080, "tls", domain="a.test", crt=b"..", key=Path("k.pem"),
                                         terminate_at="agent", mutual_tls_cas=bytearray(b"..."), metadata="m",
                                         traffic_policy="", proxy_proto="2", allow_cidr=["10.0.0.0/8"],
                                         deny_cidr="10.1.0.0/16", forwards_to="svc", verify_upstream_tls=False,
                                         upstream_root_cas="...", authtoken="t", authtoken_from_env=True,
                                         server_addr=edge.tunnel_addr, root_cas=edge.ca_pem,
                                         session_metadata="s", force_new_session=True, pooling_enabled=True)
    l1 = burrow.connect("tls://localhost:8443", hostname="b.test", policy="", session_ca_cert=Path("ca.pem"))
    l1 = burrow.forward(url="tcp://127.0.0.1:9000", remote_addr="127.0.0.1:9000", addr=22)
    print(l1.url(), l1.id(), l1.proto(), l1.metadata(), l1.forwards_to(), l1.terminate_at())
    l1.close()
    l1.join()
    for x in burrow.get_listeners():
        x.close()
    burrow.disconnect()
    burrow.disconnect(l1.url())
    burrow.set_auth_token("t")
    burrow.log_level("INFO")
    burrow.log_level(10)
    burrow.kill()
    print(edge.tls_addr, edge.tls_port, edge.options())
    s = burrow.SessionBuilder().authtoken_from_env().authtoken("t").server_addr("h:1").root_cas(b"") \
        .ca_cert("").metadata("m").connect()
    print(s.id())
    l2 = (s.tls_endpoint().domain("b.test").termination(b"", b"").agent_termination("", Path("k"))
          .mutual_tlsca(b"").traffic_policy("").proxy_proto("2").allow_cidr("a").deny_cidr("d")
          .metadata("m").forwards_to("f").verify_upstream_tls(True).pooling_enabled(True)
          .listen_and_forward(80))
    l3 = s.tcp_endpoint().remote_addr("h:1").listen_and_forward("localhost:80")
    with l2, l3, s:
        pass
    hooked = (burrow.SessionBuilder().client_info("app", "1.0").client_info("lib", "2", "c")
              .heartbeat_interval(10).heartbeat_tolerance(0.5).handle_heartbeat(lambda ms: print(ms + 1))
              .handle_disconnection(lambda addr, err: print(addr, err)).handle_stop_command(lambda: None)
              .handle_restart_command(lambda: None).handle_update_command(lambda v, major: print(v, major))
              .connect())
    l6: burrow.Listener = hooked.tls_endpoint().domain("d.test").listen()
    l6.forward("localhost:80")
    l6.forward(80)
    mine: List[burrow.Listener] = hooked.get_listeners()
    hooked.close_listener(l6.id())
    print(mine, len(burrow.get_listeners()))
    for info in edge.sessions():
        edge.send_command(info["id"], "update", version="2", permit_major_version=True)
    hooked.close()
    try:
        burrow.forward(1)
    except burrow.AuthError as e:
        code: str = e.code
        message: str = e.message
        print(code, message)
    except (burrow.BindError, burrow.CertificateError, burrow.PolicyError, burrow.ConnectionError) as e:
        print(e.code)
    except burrow.Error as e:
        assert isinstance(e, ValueError)

async def amain(edge: burrow.Edge) -> None:
    async with await burrow.async_forward(8080, proto="tcp", **edge.options()) as l:
        await l.async_join()
    l4: burrow.Listener = await burrow.forward(8080)
    s = await burrow.SessionBuilder().server_addr(edge.tunnel_addr).connect()
    l5: burrow.Listener = await s.tls_endpoint().domain("c.test").listen_and_forward(8080)
    print(l4, l5)
    l7: burrow.Listener = await s.tcp_endpoint().listen()
    await l7.forward("localhost:80")
    await l7.close()
    await s.close_listener(l7.id())
    everything: List[burrow.Listener] = await burrow.get_listeners()
    print(everything)
    await burrow.disconnect()
    await burrow.kill()
    await s.close()

def web(edge: burrow.Edge, server: http.server.HTTPServer) -> None:
    l: burrow.Listener = burrow.forward(8080, "http", schemes=["HTTPS", "HTTP"], basic_auth="u:password",
                                        auth=["v:password"], circuit_breaker=0.5, compression=True,
                                        request_header_add="a:b", request_header_remove=["c"],
                                        response_header_add=["d:e"], response_header_remove="f",
                                        websocket_tcp_converter=True, app_protocol="http2",
                                        allow_user_agent="^curl", deny_user_agent=["bot"],
                                        verify_webhook_provider="github", verify_webhook_secret="s",
                                        host_header="h", forwarded_headers=False,
                                        ip_restriction_allow_cidrs="127.0.0.0/8", ip_restriction_deny_cidrs=[])
    s = burrow.SessionBuilder().connect()
    h: burrow.HttpListenerBuilder = (s.http_endpoint().domain("h.test").scheme("HTTPS").basic_auth("u", "password")
         .allow_cidr("a").deny_cidr("d").allow_user_agent("x").deny_user_agent("y").app_protocol("http1")
         .circuit_breaker(0.5).compression().forwards_to("f").metadata("m").mutual_tlsca(b"").policy("")
         .traffic_policy("").proxy_proto("2").request_header("a", "b").response_header("c", "d")
         .remove_request_header("e").remove_response_header("f").host_header("h").verify_upstream_tls(True)
         .webhook_verification("github", "s").websocket_tcp_conversion().pooling_enabled(False))
    l2: burrow.Listener = h.listen_and_serve(server)
    l3: burrow.Listener = h.oauth("google").oidc("https://i", "c", "s").listen()
    fd: int = l3.fd
    print(l, l2, fd, l3.getsockname(), l3.fileno(), edge.http_addr)
    l4: burrow.Listener = burrow.listen(server)
    l5: burrow.Listener = burrow.listen(server, l4)
    l6: burrow.Listener = burrow.werkzeug_develop()
    l7: burrow.Listener = burrow.default(s)
    name: str = burrow.pipe_name()
    print(l5, l6, l7, name, burrow.fd(), burrow.getsockname())

async def aweb(server: http.server.HTTPServer) -> None:
    l: burrow.Listener = await burrow.listen(server)
    print(l)

with burrow.Edge(open=True) as edge:
    main(edge)
    asyncio.run(amain(edge))
'''


# mypy's cache lives in the (git-ignored) build dir, so warm runs are quick.
CACHE = Path(__file__).resolve().parent.parent / "target" / "python" / "mypy-cache"


def mypy(script: Path) -> "subprocess.CompletedProcess[str]":
    return subprocess.run([sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(CACHE), str(script)],
                          capture_output=True, text=True, cwd=script.parent)


def test_mypy_strict_accepts_the_surface(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(SAMPLE)
    result = mypy(sample)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_rejects_a_bad_option(tmp_path: Path) -> None:
    sample = tmp_path / "bad.py"
    sample.write_text("import burrow\nburrow.forward(8080, terminate_at='nowhere')\n")
    result = mypy(sample)
    assert result.returncode != 0 and "terminate_at" in result.stdout
