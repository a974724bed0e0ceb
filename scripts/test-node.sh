#!/usr/bin/env bash
# Installs the npm dev tools (committed lock file), builds the addon once (release, as
# shipped; BURROW_DEBUG_BUILD=1 for a quicker dev build), checks the npm tarball the way a
# user installs it (outside the repo), then runs jest against the same build.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
# `npm ci` fails here (other platforms' optional binaries are missing); install honours the lock.
npm install --no-audit --no-fund --loglevel=error >/dev/null
CARGO_BUILD_TARGET="${CARGO_BUILD_TARGET:-$(rustc -vV | sed -n 's/^host: //p')}"
export CARGO_BUILD_TARGET
profile=(--release)
[ "${BURROW_DEBUG_BUILD:-}" = 1 ] && profile=()
echo "-- napi build ${profile[*]:-(dev profile)}"
npx napi build --platform "${profile[@]}" --manifest-path bindings-node/Cargo.toml --output-dir bindings-node \
  --js native.js --dts native.d.ts >/dev/null

# The CLI too: tests-js/status_page.test.js runs it (target/$CARGO_BUILD_TARGET/debug/burrow).
echo "-- cargo build -p burrow-core (the CLI)"
cargo build -q -p burrow-core --bin burrow

echo "-- npm pack, installed into a fresh project outside the repo"
outside="$(mktemp -d)"
trap 'rm -rf "$outside"' EXIT
tarball="$outside/$(npm pack --silent --pack-destination "$outside")"
echo "npm package: $(basename "$tarball"), $(du -k "$tarball" | cut -f1) KiB"
mkdir "$outside/project"
echo '{"name": "burrow-user", "version": "1.0.0", "private": true}' > "$outside/project/package.json"
(cd "$outside/project" && npm install --no-audit --no-fund --loglevel=error "$tarball" >/dev/null)
./scripts/seed-certs.sh "$outside/certs"
cp tests-js/installed-seed.js tests-js/seeds.js "$outside/project/"
(cd "$outside/project" && env -u BURROW_SERVER_ADDR node installed-seed.js "$outside/certs")
cd "$repo"

report="$(mktemp)"
status=0
npx jest --json --outputFile="$report" || status=$?
node -e 'const r=JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")); console.log(`jest: ${r.numPassedTests} passed, ${r.numFailedTests} failed`)' "$report"
rm -f "$report"
exit "$status"
