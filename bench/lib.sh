# Shared by the bench/*.sh scripts (sourced, not run).

# make_certs CA-NAME SUBJECT-ALT-NAMES: writes ca.pem, leaf.pem and leaf.key (ECDSA
# P-256, the leaf signed by the CA) into the current directory.
make_certs() {
  openssl ecparam -name prime256v1 -genkey -noout -out ca.key 2>/dev/null
  openssl req -x509 -new -key ca.key -subj "/CN=$1" -days 2 -out ca.pem 2>/dev/null
  openssl ecparam -name prime256v1 -genkey -noout -out leaf.ec 2>/dev/null
  openssl pkcs8 -topk8 -nocrypt -in leaf.ec -out leaf.key
  openssl req -new -key leaf.key -subj "/CN=leaf" -out leaf.csr 2>/dev/null
  printf 'subjectAltName=%s\n' "$2" > san.ext
  openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile san.ext -out leaf.pem 2>/dev/null
}

# release_binaries ROOT: builds target/release/{burrow,burrow-bench} unless both exist.
release_binaries() {
  if [ ! -x "$1/target/release/burrow" ] || [ ! -x "$1/target/release/burrow-bench" ]; then
    (cd "$1" && env -u CARGO_BUILD_TARGET cargo build -q --release -p burrow-core -p burrow-bench)
  fi
}

# wait_line FILE PATTERN: prints the first line of FILE with PATTERN, waiting up to 30 s.
wait_line() {
  for _ in $(seq 300); do grep -m1 "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "timed out waiting for '$2' in $1" >&2; cat "$1" >&2; return 1
}

# rss_of PID: the process's resident set in KiB (0 once it is gone).
rss_of() { awk '/VmRSS/{print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

# bench_start CA-NAME SUBJECT-ALT-NAMES: the common start of a bench script (ROOT set):
# BIN, the binaries (BENCH_BIN=DIR, or this checkout's release build, built if missing);
# WORK, a directory made current and removed on exit with every process in PIDS; the
# open-file limit raised; certificates (make_certs) in WORK.
bench_start() {
  BIN="${BENCH_BIN:-$ROOT/target/release}"
  [ -n "${BENCH_BIN:-}" ] || release_binaries "$ROOT"
  WORK="$(mktemp -d)"; PIDS=()
  trap 'kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT
  cd "$WORK"
  ulimit -n "$(ulimit -Hn)"
  make_certs "$1" "$2"
}
