#!/usr/bin/env bash
# Runs every fuzz target for BURROW_FUZZ_SECS seconds each (default 15; CI uses the
# default, a longer run is e.g. BURROW_FUZZ_SECS=3600). Installs cargo-fuzz if needed.
# Uses `--sanitizer none` so it runs on the stable toolchain.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs="${BURROW_FUZZ_SECS:-15}"
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install --locked cargo-fuzz
fi
# cargo-fuzz builds for the host triple itself.
unset CARGO_BUILD_TARGET
for target in client_hello control_messages policy options; do
  echo "-- fuzz $target for ${secs}s"
  cargo fuzz run --sanitizer none "$target" -- -max_total_time="$secs" -print_final_stats=1 2>&1 \
    | grep -E "^(Done|stat::number_of_executed_units|==|SUMMARY|thread '.*' panicked)" || true
  # A crash leaves an artifact; fail loudly with its path.
  if compgen -G "artifacts/$target/crash-*" >/dev/null; then
    echo "fuzz: $target crashed: $(ls artifacts/$target/crash-*)"
    exit 1
  fi
done
echo "fuzz: no crashes"
