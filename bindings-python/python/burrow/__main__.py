"""``python -m burrow {uvicorn|gunicorn} [burrow options] [server options] APP``.

ngrok's ``python -m ngrok`` shape: opens an HTTP endpoint forwarding to the address the
server will listen on (``--host``/``--port``, ``--uds``, ``--bind``/``-b``, gunicorn's
``PORT`` and ``GUNICORN_CMD_ARGS``; else 127.0.0.1:8000), prints its URL, then runs the
server with the remaining arguments, as if burrow were not there. Endpoint options use
ngrok's flag names (``--domain``, ``--basic-auth USER PASS``, ``--request-header NAME
VALUE``, ...); ``--server-addr`` and ``--root-cas FILE`` point at an edge (without them,
``BURROW_SERVER_ADDR`` or an embedded edge in this process).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
from typing import List, Optional, Sequence

import burrow

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
PASS_THROUGH = ("host", "port", "uds", "bind")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m burrow",
                                description="Run uvicorn or gunicorn behind a burrow HTTP endpoint.")
    p.add_argument("command", choices=["uvicorn", "gunicorn"])
    session = p.add_argument_group("session")
    session.add_argument("--authtoken", help="the authtoken (default: BURROW_AUTHTOKEN, then NGROK_AUTHTOKEN)")
    session.add_argument("--session-metadata")
    session.add_argument("--server-addr", help="the edge's tunnel address (default: BURROW_SERVER_ADDR)")
    session.add_argument("--root-cas", metavar="FILE", help="CA bundle the edge's certificate chains to")
    ep = p.add_argument_group("endpoint (ngrok's names)")
    ep.add_argument("--domain")
    ep.add_argument("--scheme", action="append", choices=["HTTPS", "HTTP"])
    ep.add_argument("--basic-auth", nargs=2, metavar=("USERNAME", "PASSWORD"), action="append")
    ep.add_argument("--allow-cidr", action="append")
    ep.add_argument("--deny-cidr", action="append")
    ep.add_argument("--allow-user-agent", action="append")
    ep.add_argument("--deny-user-agent", action="append")
    ep.add_argument("--circuit-breaker", type=float)
    ep.add_argument("--compression", action="store_true")
    ep.add_argument("--forwards-to")
    ep.add_argument("--metadata")
    ep.add_argument("--mutual-tlsca", metavar="FILE")
    ep.add_argument("--proxy-proto", choices=["", "1", "2"])
    ep.add_argument("--request-header", nargs=2, metavar=("NAME", "VALUE"), action="append")
    ep.add_argument("--response-header", nargs=2, metavar=("NAME", "VALUE"), action="append")
    ep.add_argument("--remove-request-header", action="append")
    ep.add_argument("--remove-response-header", action="append")
    ep.add_argument("--webhook-verification", nargs=2, metavar=("PROVIDER", "SECRET"))
    ep.add_argument("--websocket-tcp-conversion", action="store_true")
    ep.add_argument("--oauth-provider")
    ep.add_argument("--oidc", nargs=3, metavar=("ISSUER_URL", "CLIENT_ID", "CLIENT_SECRET"))
    server = p.add_argument_group("server (passed on)")
    server.add_argument("--host")
    server.add_argument("--port", type=int)
    server.add_argument("--uds")
    server.add_argument("--fd")
    server.add_argument("--bind", "-b")
    return p


def upstream(args: argparse.Namespace) -> Optional[str]:
    """Where the server will listen, as an upstream address; None when the flags say nothing."""
    if args.uds:
        return f"unix:{args.uds}"
    if args.bind and args.bind.startswith("unix:"):
        return str(args.bind)
    if args.host or args.port:
        port = int(args.port or (os.environ.get("PORT", DEFAULT_PORT) if args.command == "gunicorn" else DEFAULT_PORT))
        return f"{args.host or DEFAULT_HOST}:{port}"
    if args.bind:
        bind = str(args.bind)
        if bind.startswith(":"):
            bind = DEFAULT_HOST + bind
        if not re.search(r":\d+$", bind):
            bind += f":{os.environ.get('PORT', DEFAULT_PORT)}"
        return bind
    return None


def endpoint(session: burrow.Session, args: argparse.Namespace) -> burrow.HttpListenerBuilder:
    b = session.http_endpoint()
    if args.domain:
        b.domain(args.domain)
    for s in args.scheme or []:
        b.scheme(s)
    for user, password in args.basic_auth or []:
        b.basic_auth(user, password)
    for c in args.allow_cidr or []:
        b.allow_cidr(c)
    for c in args.deny_cidr or []:
        b.deny_cidr(c)
    for r in args.allow_user_agent or []:
        b.allow_user_agent(r)
    for r in args.deny_user_agent or []:
        b.deny_user_agent(r)
    if args.circuit_breaker is not None:
        b.circuit_breaker(args.circuit_breaker)
    if args.compression:
        b.compression()
    if args.forwards_to:
        b.forwards_to(args.forwards_to)
    if args.metadata:
        b.metadata(args.metadata)
    if args.mutual_tlsca:
        with open(args.mutual_tlsca, "rb") as f:
            b.mutual_tlsca(f.read())
    if args.proxy_proto is not None:
        b.proxy_proto(args.proxy_proto)
    for name, value in args.request_header or []:
        b.request_header(name, value)
    for name, value in args.response_header or []:
        b.response_header(name, value)
    for name in args.remove_request_header or []:
        b.remove_request_header(name)
    for name in args.remove_response_header or []:
        b.remove_response_header(name)
    if args.webhook_verification:
        b.webhook_verification(*args.webhook_verification)
    if args.websocket_tcp_conversion:
        b.websocket_tcp_conversion()
    if args.oauth_provider:
        b.oauth(args.oauth_provider)
    if args.oidc:
        b.oidc(*args.oidc)
    return b


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = parser()
    args, rest = p.parse_known_args(argv)
    if args.fd or (args.bind or "").startswith("fd://"):
        p.error("a file descriptor server socket is not supported: give --host/--port, --uds or --bind")
    target = upstream(args)
    if target is None and args.command == "gunicorn" and os.environ.get("GUNICORN_CMD_ARGS"):
        env_args, _ = p.parse_known_args([args.command, *shlex.split(os.environ["GUNICORN_CMD_ARGS"])])
        target = upstream(env_args)
    if target is None:
        args.host, args.port = DEFAULT_HOST, DEFAULT_PORT
        target = upstream(args)
    assert target is not None
    builder = burrow.SessionBuilder()
    if args.authtoken:
        builder.authtoken(args.authtoken)
    else:
        builder.authtoken_from_env()
    if args.session_metadata:
        builder.metadata(args.session_metadata)
    if args.server_addr:
        builder.server_addr(args.server_addr)
    if args.root_cas:
        with open(args.root_cas, "rb") as f:
            builder.root_cas(f.read())
    try:
        session = builder.connect()
        listener = endpoint(session, args).listen_and_forward(target)
    except burrow.Error as e:
        print(f"burrow: {e.code}: {e.message}", file=sys.stderr)
        sys.exit(1)
    print(f"Forwarding {listener.url()} -> {listener.forwards_to()}", flush=True)

    # Now run the server as if it had been started directly.
    passed: List[str] = [args.command]
    for key in PASS_THROUGH:
        value = getattr(args, key)
        if value:
            passed += [f"--{key}", str(value)]
    sys.argv = passed + rest
    if args.command == "uvicorn":
        import uvicorn
        uvicorn.main()
    else:
        from gunicorn.app.wsgiapp import run  # type: ignore[import-untyped]
        run()


if __name__ == "__main__":
    main()
