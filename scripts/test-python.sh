#!/usr/bin/env bash
# Builds the Python extension into .venv (created on first use) and runs the pytest suite.
# Works on a fresh machine (only python3 with venv, and cargo, needed) and re-runs quickly.
set -euo pipefail
cd "$(dirname "$0")/.."

REQUIREMENTS=(
  "maturin==1.16.0" "pytest==9.2.0" "pytest-asyncio==1.5.0" "pytest-timeout==2.4.0"
  "mypy==2.4.1" "cryptography==50.0.2"
)

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv || {
    echo "python3 -m venv failed: on Debian/Ubuntu install python3-venv" >&2
    rm -rf .venv
    exit 1
  }
fi
# pip only when the pinned set changed since the last successful install.
stamp=.venv/.burrow-test-requirements
if [ "$(cat "$stamp" 2>/dev/null)" != "${REQUIREMENTS[*]}" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check "${REQUIREMENTS[@]}"
  echo "${REQUIREMENTS[*]}" > "$stamp"
fi

# maturin gets its own target dir: it builds pyo3 with other settings than plain cargo
# (BUILD.md gotcha 2), so sharing target/ would rebuild pyo3 back and forth.
export CARGO_TARGET_DIR="$PWD/target/python"
export VIRTUAL_ENV="$PWD/.venv"
export PYO3_PYTHON="$PWD/.venv/bin/python"
unset CARGO_BUILD_TARGET

echo "-- maturin develop"
.venv/bin/maturin develop -q

# clippy with the environment maturin gives cargo, so neither invalidates the other's pyo3 build.
echo "-- cargo clippy -p burrow-python"
py_version="$(.venv/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
host="$(rustc -vV | sed -n 's/^host: //p')"
pyo3_config="$CARGO_TARGET_DIR/maturin/pyo3-config-$host-$py_version-abi3.txt"
if [ -f "$pyo3_config" ]; then  # (if maturin names it otherwise, clippy still works, just slower)
  export PYO3_CONFIG_FILE="$pyo3_config" PYO3_BUILD_EXTENSION_MODULE=1 \
    PYO3_ENVIRONMENT_SIGNATURE="cpython-$py_version-64bit" PYTHON_SYS_EXECUTABLE="$PYO3_PYTHON"
fi
cargo clippy -q -p burrow-python -- -D warnings

echo "-- pytest tests-py"
.venv/bin/python -m pytest -q -p no:cacheprovider tests-py
