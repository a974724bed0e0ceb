"""The README's Python blocks run as written (issue 14, item 9).

Each block marked ``<!-- readme-run: python -->`` runs as a script in a fresh
interpreter, in a directory holding ``crt.pem``/``key.pem`` for ``app.example.com``
(the README's ``crt_pem``/``key_pem`` are those files' bytes). A block marked
``<!-- readme-run: pytest -->`` is a test of the user's and runs under pytest with the
``edge`` fixture burrow's plugin provides.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import List, Tuple

import pytest

from conftest import Pki

README = Path(__file__).resolve().parent.parent / "README.md"

PRELUDE = """\
from pathlib import Path
crt_pem = Path("crt.pem").read_bytes()
key_pem = Path("key.pem").read_bytes()
"""


def marked(kind: str) -> List[Tuple[int, str]]:
    """(line, code) of every block that a ``<!-- readme-run: KIND -->`` line precedes."""
    lines = README.read_text().splitlines()
    blocks = []
    for i, line in enumerate(lines):
        if line.strip() == f"<!-- readme-run: {kind} -->":
            assert lines[i + 1].startswith("```"), f"README line {i + 1}: marker without a block"
            end = next(j for j in range(i + 2, len(lines)) if lines[j].startswith("```"))
            blocks.append((i + 2, "\n".join(lines[i + 2:end]) + "\n"))
    return blocks


def run(args: List[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("BURROW_SERVER_ADDR", "BURROW_AUTHTOKEN")}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def test_the_readme_marks_its_python_blocks() -> None:
    assert len(marked("python")) >= 1 and len(marked("pytest")) >= 1


@pytest.mark.parametrize("line,code", marked("python"), ids=lambda v: str(v) if isinstance(v, int) else "")
def test_python_block_runs(line: int, code: str, tmp_path: Path, pki: Pki) -> None:
    cert = pki.leaf("app.example.com")
    (tmp_path / "crt.pem").write_bytes(cert.crt)
    (tmp_path / "key.pem").write_bytes(cert.key)
    script = tmp_path / "readme_block.py"
    script.write_text(PRELUDE + code)
    done = run([sys.executable, str(script)], tmp_path)
    assert done.returncode == 0, f"README line {line}:\n{done.stdout}\n{done.stderr}"
    assert "tls://app.example.com:" in done.stdout, done.stdout


@pytest.mark.parametrize("line,code", marked("pytest"), ids=lambda v: str(v) if isinstance(v, int) else "")
def test_pytest_block_runs(line: int, code: str, tmp_path: Path) -> None:
    (tmp_path / "test_readme_block.py").write_text("import burrow\n\n" + code)
    done = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)], tmp_path)
    assert done.returncode == 0, f"README line {line}:\n{done.stdout}\n{done.stderr}"
    assert "1 passed" in done.stdout, done.stdout
