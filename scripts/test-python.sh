#!/usr/bin/env bash
# Builds the Python extension into .venv (created on first use) and runs the pytest suite.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check \
  "maturin==1.16.0" "pytest==9.2.0" "pytest-asyncio==1.5.0" "pytest-timeout" "mypy" "cryptography"
# maturin gets its own target dir: it builds pyo3 with other settings than plain cargo.
export CARGO_TARGET_DIR="$PWD/target/python"
unset CARGO_BUILD_TARGET
VIRTUAL_ENV="$PWD/.venv" .venv/bin/maturin develop -q --uv 2>/dev/null || VIRTUAL_ENV="$PWD/.venv" .venv/bin/maturin develop -q
.venv/bin/python -m pytest -q tests-py
