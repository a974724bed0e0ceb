"""asyncio: loop-aware forward(), async_forward(), 50 concurrent forwards and clients,
async context managers and builders."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

import pytest

import burrow
from conftest import Echo, Pki


async def talk(edge: burrow.Edge, name: str, msg: bytes, ca: str = "") -> bytes:
    ctx = ssl.create_default_context(cadata=ca or edge.ca_pem)
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.tls_port, ssl=ctx, server_hostname=name)
    writer.write(msg)
    await writer.drain()
    got = await reader.readexactly(len(msg))
    writer.close()
    await writer.wait_closed()
    return got


@pytest.mark.asyncio
async def test_fifty_concurrent_async_forwards(edge: burrow.Edge) -> None:
    service = Echo()
    listeners = await asyncio.gather(*[
        burrow.async_forward(service.port, proto="tls", domain=f"as{i}.py.test", terminate_at="edge", **edge.options())
        for i in range(50)
    ])
    assert len({x.url() for x in listeners}) == 50
    results = await asyncio.gather(*[talk(edge, f"as{i}.py.test", f"hello {i}".encode() * 1000) for i in range(50)])
    assert all(r == f"hello {i}".encode() * 1000 for i, r in enumerate(results))
    # 50 concurrent calls with the same settings share one session
    assert len(burrow._all_sessions) == 1


@pytest.mark.asyncio
async def test_forward_inside_a_loop_is_awaitable(edge: burrow.Edge) -> None:
    service = Echo()
    pending = burrow.forward(service.port, proto="tls", domain="aw.py.test", terminate_at="edge", **edge.options())
    assert asyncio.iscoroutine(pending)
    async with await pending as listener:
        assert await talk(edge, "aw.py.test", b"awaited") == b"awaited"
    assert listener not in burrow.get_listeners()


@pytest.mark.asyncio
async def test_async_join_ends_on_close(edge: burrow.Edge) -> None:
    service = Echo()
    listener = await burrow.async_forward(service.port, proto="tls", terminate_at="edge", **edge.options())
    joined = asyncio.ensure_future(listener.async_join())
    await asyncio.sleep(0)  # let the join start; it must still be waiting
    assert not joined.done()
    listener.close()
    await asyncio.wait_for(joined, 10)


@pytest.mark.asyncio
async def test_async_errors_carry_codes(edge: burrow.Edge) -> None:
    with pytest.raises(burrow.Error) as e:
        await burrow.async_forward(8080, proto="tls", nope=1, **edge.options())
    assert e.value.code == "INVALID_OPTION" and "nope" in e.value.message
    with pytest.raises(burrow.CertificateError) as c:
        await burrow.async_forward(8080, proto="tls", crt=b"junk", key=b"junk", **edge.options())
    assert c.value.code == "INVALID_PEM"


@pytest.mark.asyncio
async def test_builders_inside_a_loop_are_awaitable(edge: burrow.Edge, tmp_path: Path) -> None:
    """As in ngrok's SDK: ``await SessionBuilder()...connect()`` and ``await ...listen_and_forward()``."""
    pki = Pki()
    cert = pki.leaf("ab.py.test")
    service = Echo(cert, tmp_path)  # the upstream terminates: no crt/key given
    session = await burrow.SessionBuilder().server_addr(edge.tunnel_addr).root_cas(edge.ca_pem).connect()
    with session:
        listener = await session.tls_endpoint().domain("ab.py.test").metadata("async").listen_and_forward(
            f"127.0.0.1:{service.port}")
        assert listener.metadata() == "async" and listener.terminate_at() == "upstream"
        assert await talk(edge, "ab.py.test", b"built in a loop", ca=pki.ca_pem.decode()) == b"built in a loop"


@pytest.mark.asyncio
async def test_a_cancelled_forward_raises_cancelled_and_the_loop_goes_on(edge: burrow.Edge) -> None:
    """Cancelling an awaited call (here: a timeout while the server stays silent) cancels
    the awaitable; later calls on the same loop still complete."""
    silent = socket.socket()  # accepts the tunnel connection, never answers the handshake
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    try:
        pending = burrow.async_forward(1, proto="tls", server_addr="127.0.0.1:%d" % silent.getsockname()[1],
                                       root_cas=Pki().ca_pem, force_new_session=True)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(pending, 0.2)
    finally:
        silent.close()
    service = Echo()
    async with await burrow.async_forward(service.port, proto="tls", domain="after.py.test", terminate_at="edge",
                                          **edge.options()):
        assert await talk(edge, "after.py.test", b"still working") == b"still working"
