#!/usr/bin/env bash
# Memory over time under steady load (issue 18's soak), on fresh release processes:
#
#   bench/soak.sh [MINUTES]               # default 30; writes bench/soak.json
#   HEAPTRACK=1 bench/soak.sh [MINUTES]   # the same with edge and agents under heaptrack,
#                                         # plus their heap at minute 5 and at the end
#
# One edge; two agents, passthrough (to a TLS echo) and edge termination (to a plain
# echo); one `burrow-bench run --workload steady` client per agent: SOAK_RATE new
# connections per second each (default 40), each echoing 1 KiB to 256 KiB, checked.
# RSS of every process is sampled every 30 s; the result is RSS at the end ÷ RSS at
# minute 5 (the target is at most 1.1), which bench/report.py prints with the rest.
# HEAPTRACK=1 needs heaptrack (Debian: apt-get install heaptrack); heaptrack's own
# bookkeeping lives in the profiled processes, so that run's RSS is not comparable.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
MIN="${1:-30}"; RATE="${SOAK_RATE:-40}"
[ "$MIN" -ge 6 ] || { echo "minutes: at least 6 (the baseline is minute 5)" >&2; exit 2; }
# BENCH_BIN=DIR runs the burrow and burrow-bench in DIR (another build, to compare).
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
bench_start "soak CA" "DNS:up.soak.test,DNS:edge.soak.test"
# under NAME CMD...: CMD, or CMD under heaptrack writing NAME.heap.* with HEAPTRACK=1.
# It execs, so that `under ... &` leaves $! the process itself (stopped on exit).
under() {
  local name="$1"; shift
  if [ "${HEAPTRACK:-}" = 1 ]; then exec heaptrack -o "$WORK/$name.heap" "$@"; else exec "$@"; fi
}
# pid_of PATTERN: the newest process whose command line has PATTERN (heaptrack wraps it).
pid_of() { pgrep -n -f "$1"; }

"$BIN/burrow-bench" echo --cert leaf.pem --key leaf.key > echo_tls.log 2>&1 & PIDS+=($!)
"$BIN/burrow-bench" echo > echo_plain.log 2>&1 & PIDS+=($!)
printf 'open = true\nstate_dir = "%s"\n' "$WORK/state" > edge.toml
under edge "$BIN/burrow" edge --config edge.toml --log warn > edge.log 2>&1 & PIDS+=($!)
tls_up=$(wait_line echo_tls.log listening | awk '{print $2}')
plain_up=$(wait_line echo_plain.log listening | awk '{print $2}')
tunnel=$(wait_line edge.log "tunnel:" | awk '{print $2}')
public=$(wait_line edge.log "tls:" | awk '{print $2}')
agent=(--server-addr "$tunnel" --root-cas state/ca.pem --web-addr false --log warn)
under agent_up "$BIN/burrow" tls "$tls_up" --url tls://up.soak.test "${agent[@]}" > agent_up.log 2>&1 & PIDS+=($!)
under agent_edge "$BIN/burrow" tls "$plain_up" --url tls://edge.soak.test --crt leaf.pem --key leaf.key "${agent[@]}" > agent_edge.log 2>&1 & PIDS+=($!)
wait_line agent_up.log Forwarding > /dev/null
wait_line agent_edge.log Forwarding > /dev/null
EDGE=$(pid_of "$BIN/burrow edge --config edge.toml")
AGENT_UP=$(pid_of "$BIN/burrow tls $tls_up")
AGENT_EDGE=$(pid_of "$BIN/burrow tls $plain_up")

echo "== soak: $MIN min, $RATE new connections/s to each of passthrough and edge termination"
CLIENTS=()
for name in up edge; do
  "$BIN/burrow-bench" run --target "$public" --sni "$name.soak.test" --ca ca.pem --conns 64 \
    --workload steady --rate "$RATE" --secs $((MIN * 60)) > "client_$name.json" 2> "client_$name.err" &
  CLIENTS+=($!); PIDS+=($!)
done
: > samples.jsonl
start=$(date +%s)
while [ $(( $(date +%s) - start )) -lt $((MIN * 60)) ]; do
  printf '{"t": %d, "edge": %d, "agent_upstream": %d, "agent_edge": %d}\n' \
    $(( $(date +%s) - start )) "$(rss_of "$EDGE")" "$(rss_of "$AGENT_UP")" "$(rss_of "$AGENT_EDGE")" >> samples.jsonl
  sleep 30
done
failed=0
for c in "${CLIENTS[@]}"; do wait "$c" || failed=1; done
if [ "$failed" = 1 ]; then echo "soak: a client failed:" >&2; cat client_*.err >&2; exit 1; fi
printf '{"t": %d, "edge": %d, "agent_upstream": %d, "agent_edge": %d}\n' \
  $(( $(date +%s) - start )) "$(rss_of "$EDGE")" "$(rss_of "$AGENT_UP")" "$(rss_of "$AGENT_EDGE")" >> samples.jsonl

HEAP_ARGS=()
if [ "${HEAPTRACK:-}" = 1 ]; then
  # heaptrack writes its data when the process exits: stop them, then read heap over time.
  kill "$EDGE" "$AGENT_UP" "$AGENT_EDGE"
  for p in "$EDGE" "$AGENT_UP" "$AGENT_EDGE"; do while kill -0 "$p" 2>/dev/null; do sleep 0.2; done; done
  sleep 2
  for name in edge agent_up agent_edge; do
    heaptrack_print -f "$WORK/$name".heap.* -M "$WORK/$name.massif" --massif-detailed-freq 0 \
      --print-peaks 0 --print-allocators 0 --print-temporary 0 --print-leaks 1 -n 5 > "$name.leaks" 2>/dev/null || true
    echo "== heaptrack, $name: $(grep -m1 'total memory leaked' "$name.leaks" || true)"
    HEAP_ARGS+=("$name=$WORK/$name.massif")
  done
fi
# (Not `OUT=...$([ ... ] && ...)`: under `set -e` an assignment whose substitution
# fails ends the script, which made every plain run exit 1 here without a word.)
OUT="$ROOT/bench/soak.json"
if [ "${HEAPTRACK:-}" = 1 ]; then OUT="$ROOT/bench/soak-heaptrack.json"; fi
python3 "$ROOT/bench/soak_report.py" "$MIN" "$RATE" samples.jsonl client_up.json client_edge.json "$OUT" "${HEAP_ARGS[@]}"
