"""A clean exit: a script that awaited burrow calls (a forward and a transfer, a refused
connect, refused binds, logging at DEBUG, a call still in flight) exits with code 0 every
time, also on a busy machine, where Rust threads racing the interpreter's finalization
used to abort it (``Fatal Python error: PyGILState_Release``, exit code 134) or crash it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import List, Tuple

import pytest

RUNS = 200
PARALLEL = 4  # child scripts at once (each also runs an edge, an echo service and a client)
BURNERS = 2  # busy loops beside them, as on a loaded machine

SCRIPT = r'''
import asyncio, logging, socket
import burrow

logging.basicConfig(level=logging.DEBUG, format="%(name)s %(message)s")
burrow.log_level("DEBUG")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def echo(reader, writer):
    writer.write(await reader.read(1024))
    await writer.drain()
    writer.close()


async def main() -> None:
    service = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = service.sockets[0].getsockname()[1]
    listener = await burrow.async_forward(port, proto="tcp")
    host, _, public = listener.url().rpartition(":")
    reader, writer = await asyncio.open_connection("127.0.0.1", int(public))
    writer.write(b"through the tunnel")
    assert await reader.readexactly(18) == b"through the tunnel"
    writer.close()
    failures = {
        "CONNECT_FAILED": dict(server_addr=f"127.0.0.1:{closed_port()}", force_new_session=True),
        "INVALID_POLICY": dict(traffic_policy="on_tcp_connect: [{actions: [{type: no-such-action}]}]"),
        "INVALID_URL": dict(domain="-not..a-domain-"),  # refused by the edge
    }
    for code, options in failures.items():
        try:
            await burrow.async_forward(port, **options)
        except burrow.Error as e:
            assert e.code == code, (code, e.code, e.message)
        else:
            raise AssertionError(f"no {code}")
    # still in flight when the loop ends (asyncio.run cancels it)
    asyncio.ensure_future(burrow.async_forward(port, server_addr=f"127.0.0.1:{closed_port()}",
                                               force_new_session=True))
    await asyncio.sleep(0)
    print("exiting", listener.url(), flush=True)


asyncio.run(main())
'''


def run_child(script: Path, cwd: Path) -> Tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("BURROW_SERVER_ADDR", "BURROW_AUTHTOKEN")}
    proc = subprocess.run([sys.executable, str(script)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.timeout(1200)
def test_exit_is_clean_under_load(tmp_path: Path) -> None:
    script = tmp_path / "exit_script.py"
    script.write_text(SCRIPT)
    burners: List["subprocess.Popen[bytes]"] = []
    try:
        for _ in range(BURNERS):
            burners.append(subprocess.Popen([sys.executable, "-c", "while True: pass"]))
        with ThreadPoolExecutor(PARALLEL) as pool:
            results = list(pool.map(lambda _: run_child(script, tmp_path), range(RUNS)))
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
    failed = [(code, err[-2000:]) for code, out, err in results if code != 0 or "exiting tcp://" not in out]
    assert not failed, f"{len(failed)} of {RUNS} runs did not exit cleanly; first: {failed[0]}"
    assert all("burrow endpoint online url=tcp://" in err for _, _, err in results), "bridged logs were delivered"
