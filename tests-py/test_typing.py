"""mypy --strict accepts a script that uses the whole public surface."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SAMPLE = '''
import asyncio
from pathlib import Path
import burrow

def main(edge: burrow.Edge) -> None:
    l1: burrow.Listener = burrow.forward(8080, "tls", domain="a.test", crt=b"..", key=Path("k.pem"),
                                         terminate_at="agent", mutual_tls_cas="...", metadata="m",
                                         traffic_policy="", proxy_proto="2", allow_cidr=["10.0.0.0/8"],
                                         server_addr=edge.tunnel_addr, root_cas=edge.ca_pem)
    print(l1.url(), l1.id(), l1.proto(), l1.metadata(), l1.forwards_to(), l1.terminate_at())
    l1.close()
    l1.join()
    for x in burrow.get_listeners():
        x.close()
    burrow.disconnect()
    burrow.disconnect(l1.url())
    burrow.set_auth_token("t")
    burrow.log_level("INFO")
    burrow.kill()
    s = burrow.SessionBuilder().authtoken_from_env().server_addr("h:1").root_cas(b"").connect()
    l2 = s.tls_endpoint().domain("b.test").termination(b"", b"").mutual_tlsca(b"").listen_and_forward(80)
    l3 = s.tcp_endpoint().remote_addr("h:1").listen_and_forward("localhost:80")
    with l2, l3:
        pass
    try:
        burrow.forward(1)
    except burrow.AuthError as e:
        code: str = e.code
        message: str = e.message
        print(code, message)

async def amain() -> None:
    async with await burrow.async_forward(8080, proto="tcp") as l:
        await l.async_join()

with burrow.Edge(open=True) as edge:
    main(edge)
asyncio.run(amain())
'''


def test_mypy_strict_accepts_the_surface(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(SAMPLE)
    result = subprocess.run([sys.executable, "-m", "mypy", "--strict", str(sample)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_rejects_a_bad_option(tmp_path: Path) -> None:
    sample = tmp_path / "bad.py"
    sample.write_text("import burrow\nburrow.forward(8080, terminate_at='nowhere')\n")
    result = subprocess.run([sys.executable, "-m", "mypy", "--strict", str(sample)], capture_output=True, text=True)
    assert result.returncode != 0 and "terminate_at" in result.stdout
