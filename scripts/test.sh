#!/usr/bin/env bash
# Runs every test of the project: Rust (unit, integration, CLI, doc), then the
# language suites as they are added. Exits non-zero on the first failing suite.
# On a fresh machine it first installs what the tests need (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== setup"
./scripts/setup.sh

# One target triple for cargo, napi and maturin so their builds share artifacts.
CARGO_BUILD_TARGET="$(rustc -vV | sed -n 's/^host: //p')"
export CARGO_BUILD_TARGET

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --exclude burrow-python --all-targets -- -D warnings

echo "== cargo test"
cargo test --workspace --exclude burrow-python --exclude burrow-node

echo "== fuzz (short)"
./scripts/fuzz.sh

echo "== benchmark (quick mode: the load tool must keep working)"
bench/run.sh --quick

echo "== demo"
cargo run -q -p burrow-core --example demo > /tmp/burrow-demo.out 2>&1 || { cat /tmp/burrow-demo.out; exit 1; }
grep -q "All three modes and the https endpoint carried bytes through the tunnel." /tmp/burrow-demo.out
grep -q "app answered: hello from the web app: GET /demo" /tmp/burrow-demo.out
echo "demo: ok"

# Language suites last (each builds its binding and runs its tests); pytest closes the run.
for suite in scripts/test-node.sh scripts/test-python.sh; do
  if [ -x "$suite" ]; then
    echo "== $suite"
    "$suite"
  fi
done

