#!/usr/bin/env bash
# Installs the npm dev tools (committed lock file), builds the addon and runs jest.
set -euo pipefail
cd "$(dirname "$0")/.."
# `npm ci` fails here (other platforms' optional binaries are missing); install honours the lock.
npm install --no-audit --no-fund --loglevel=error >/dev/null
CARGO_BUILD_TARGET="${CARGO_BUILD_TARGET:-$(rustc -vV | sed -n 's/^host: //p')}"
export CARGO_BUILD_TARGET
npx napi build --platform --manifest-path bindings-node/Cargo.toml --output-dir bindings-node \
  --js native.js --dts native.d.ts >/dev/null
report="$(mktemp)"
status=0
npx jest --json --outputFile="$report" || status=$?
node -e 'const r=JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")); console.log(`jest: ${r.numPassedTests} passed, ${r.numFailedTests} failed`)' "$report"
rm -f "$report"
exit "$status"
