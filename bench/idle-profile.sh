#!/usr/bin/env bash
# Idle memory per proxied connection, edge and agent apart, on fresh processes:
#
#   bench/idle-profile.sh [upstream|agent|edge] [CONNS]   # default: edge 10000
#   HEAPTRACK=1 bench/idle-profile.sh edge 2000       # and a heap profile of the edge
#
# One edge, one agent (passthrough to a TLS echo; agent or edge termination to a plain echo)
# and `burrow-bench idle`; RSS is read 2 s after every connection is up. With
# HEAPTRACK=1 the edge runs under heaptrack and its peak consumers are printed.
# Uses the release build of bench/run.sh (target/release); builds it if missing.
# HEAPTRACK=1 needs heaptrack (Debian: apt-get install heaptrack).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
MODE="${1:-edge}"; N="${2:-10000}"
case "$MODE" in upstream|agent|edge) ;; *) echo "mode: upstream, agent or edge" >&2; exit 2 ;; esac
# BENCH_BIN=DIR runs the burrow and burrow-bench in DIR (another build, to compare).
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
bench_start "idle CA" "DNS:idle.test"

if [ "$MODE" = upstream ]; then
  "$BIN/burrow-bench" echo --cert leaf.pem --key leaf.key > echo.log 2>&1 & PIDS+=($!)
  tls_args=()
else
  "$BIN/burrow-bench" echo > echo.log 2>&1 & PIDS+=($!)
  tls_args=(--crt leaf.pem --key leaf.key)
  [ "$MODE" = agent ] && tls_args+=(--terminate-at agent)
fi
printf 'open = true\nstate_dir = "%s"\n' "$WORK/state" > edge.toml
if [ "${HEAPTRACK:-}" = 1 ]; then
  heaptrack -o "$WORK/edge.heap" "$BIN/burrow" edge --config edge.toml --log warn > edge.log 2>&1 & PIDS+=($!)
else
  "$BIN/burrow" edge --config edge.toml --log warn > edge.log 2>&1 & PIDS+=($!)
fi
up=$(wait_line echo.log listening | awk '{print $2}')
tunnel=$(wait_line edge.log "tunnel:" | awk '{print $2}')
tls=$(wait_line edge.log "tls:" | awk '{print $2}')
edge_pid=$(pgrep -n -f "$BIN/burrow edge --config edge.toml")
"$BIN/burrow" tls "$up" --url tls://idle.test "${tls_args[@]}" --server-addr "$tunnel" \
  --root-cas state/ca.pem --web-addr false --log warn > agent.log 2>&1 & PIDS+=($!); agent_pid=$!
wait_line agent.log Forwarding > /dev/null
e0=$(rss_of "$edge_pid"); a0=$(rss_of "$agent_pid")
mkfifo hold
"$BIN/burrow-bench" idle --target "$tls" --sni idle.test --ca ca.pem --conns "$N" < hold > idle.out 2> idle.err & PIDS+=($!)
exec 3>hold
wait_line idle.out ready > /dev/null
sleep 2
e1=$(rss_of "$edge_pid"); a1=$(rss_of "$agent_pid")
per() { echo $(( ($2 - $1) * 1024 / N )); }
echo "$MODE, $N idle connections: edge $(per "$e0" "$e1") B/conn, agent $(per "$a0" "$a1") B/conn, together $(( $(per "$e0" "$e1") + $(per "$a0" "$a1") )) B/conn"
exec 3>&-
if [ "${HEAPTRACK:-}" = 1 ]; then
  kill "$edge_pid"; sleep 1
  heaptrack_print -f "$WORK"/edge.heap.* --print-peaks 1 --print-allocators 0 \
    --print-temporary 0 --print-leaks 0 -n 6 2>/dev/null \
    | grep -E "peak memory consumed|consumed over|^    [A-Za-z_<\$]" \
    | grep -vE "tokio::runtime|std::sys|FnOnce|thread_start|start_thread|clone3" | head -40
fi
