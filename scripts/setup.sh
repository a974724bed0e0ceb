#!/usr/bin/env bash
# Makes sure this machine has what the tests need besides the Rust toolchain: the system
# packages below, python3 with venv, node and npm. Run as root where apt-get exists, it
# installs what is missing (apt-get update first); otherwise it prints the one command to
# run and fails. Nothing is skipped silently. Called by scripts/test.sh.
set -euo pipefail

# Debian packages the build and tests use (openssl: test certificates; pebble: the ACME
# tests; etcd-server: the cluster tests; protobuf-compiler: protoc, which the etcd client
# crate needs at build time; curl: the HTTP tests' client; wrk and nghttp2-client
# (h2load): the benchmark's HTTP rows; tmux: the live console's tests run burrow in a
# detached tmux window and read its screen).
SYSTEM_PACKAGES=(openssl ca-certificates pebble etcd-server protobuf-compiler curl wrk nghttp2-client tmux)

missing=()
if command -v dpkg-query >/dev/null 2>&1; then
  for pkg in "${SYSTEM_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
  done
else
  for tool in openssl pebble etcd protoc curl wrk h2load tmux; do  # no dpkg: check the commands (package names) themselves
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
  done
fi
# Checked by what the scripts run (python3 may come from pyenv, npm with nodesource's nodejs).
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
# Debian's Chromium (and ChromeDriver) for the web status page's browser test
# (tests-js/status_page.test.js drives it with playwright-core, which downloads no browser).
[ -x /usr/bin/chromium ] || missing+=(chromium chromium-driver)

if [ "${#missing[@]}" -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "setup: installing ${missing[*]}"
    apt-get update -qq
    # Chromium pulls in a newer systemd on some images; an install that stops half way
    # (dpkg's error, seen once here) is repaired with --fix-broken and tried once more.
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; then
      echo "setup: apt-get install failed; repairing with --fix-broken and trying again"
      DEBIAN_FRONTEND=noninteractive apt-get --fix-broken install -y -qq >/dev/null
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
  else
    echo "setup: the tests need ${missing[*]}; install with: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi

# rustfmt and clippy run first in scripts/test.sh.
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  rustup component add rustfmt clippy
fi
echo "setup: ok (${SYSTEM_PACKAGES[*]}, python3-venv, node, npm, chromium present)"
