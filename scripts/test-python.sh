#!/usr/bin/env bash
# Builds the Python wheel once, the way `pip install .` builds it (`pip wheel .`: maturin,
# release profile; BURROW_DEBUG_BUILD=1 for a quicker dev build), installs it into .venv
# (created on first use) for pytest and into a fresh venv outside the repo, where a seed
# example runs from a temporary directory; then clippy, and pytest last.
# Works on a fresh machine (python3 with venv, openssl, cargo, and pip's index reachable).
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"

REQUIREMENTS=(
  "maturin==1.16.0" "pytest==9.2.0" "pytest-asyncio==1.5.0" "pytest-timeout==2.4.0"
  "mypy==2.4.1" "cryptography==50.0.2" "flask==3.1.3" "werkzeug==3.1.9" "aiohttp==3.14.5"
  "uvicorn==0.54.0" "gunicorn==27.0.1" "prometheus-client==0.26.0"
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
export PYO3_PYTHON="$PWD/.venv/bin/python"
unset CARGO_BUILD_TARGET

echo "-- pip wheel . (what pip install . builds)"
wheels="$CARGO_TARGET_DIR/test-wheel"
rm -rf "$wheels"
pep517_args=""
[ "${BURROW_DEBUG_BUILD:-}" = 1 ] && pep517_args="--profile dev"
env -u PYO3_PYTHON MATURIN_PEP517_ARGS="$pep517_args" \
  .venv/bin/python -m pip wheel -q --disable-pip-version-check --no-deps --wheel-dir "$wheels" .
wheel="$(echo "$wheels"/burrow-*.whl)"
echo "wheel: $(basename "$wheel"), $(du -k "$wheel" | cut -f1) KiB"
.venv/bin/python -m pip install -q --disable-pip-version-check --force-reinstall --no-deps "$wheel"

echo "-- the wheel, installed into a fresh venv outside the repo"
outside="$(mktemp -d)"
trap 'rm -rf "$outside"' EXIT
./scripts/seed-certs.sh "$outside/certs"
cp tests-py/installed_seed.py tests-py/seeds.py "$outside/"
python3 -m venv "$outside/venv"
"$outside/venv/bin/python" -m pip install -q --disable-pip-version-check "$wheel"
(cd "$outside" && env -u BURROW_SERVER_ADDR "$outside/venv/bin/python" installed_seed.py "$repo" certs)

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
