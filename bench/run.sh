#!/usr/bin/env bash
# burrow's benchmark suite: starts every contender on 127.0.0.1, runs the same
# workloads against each (3 runs, median), prints one table with ratios to a direct
# TLS connection and writes bench/results.json.
#
#   bench/run.sh           # everything: direct, burrow x3, a cluster's hop, nginx x2,
#                          # rathole (TLS), bore
#   bench/run.sh --quick   # seconds: direct and burrow only, 1 run each (used by CI)
#   BENCH_ONLY=cluster bench/run.sh   # only the contenders whose name matches (grep -E)
#
# Client and contenders share this machine's cores: compare ratios, not absolutes.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
QUICK=0
[ "${1:-}" = "--quick" ] && QUICK=1
if [ "$QUICK" = 1 ]; then
  RUNS=1; SECS=1; IDLE_COUNTS="200"; BIND_COUNT=10; LOOKUP_ROUTES=1000; HANDSHAKES=(--rounds 1 --count 100)
else
  RUNS=3; SECS=2; IDLE_COUNTS="1000 10000"; BIND_COUNT=50; LOOKUP_ROUTES=10000; HANDSHAKES=(--rounds 5 --count 2000)
fi
# picked NAME: true when BENCH_ONLY is unset or matches the contender NAME.
picked() { [ -z "${BENCH_ONLY:-}" ] || echo "$1" | grep -qE "$BENCH_ONLY"; }
# nginx, rathole and bore run in the full suite, unless BENCH_ONLY leaves them out.
EXTERNAL=$((1 - QUICK))
if [ -n "${BENCH_ONLY:-}" ] && ! printf 'nginx\nrathole\nbore\nhttp nginx\n' | grep -qE "$BENCH_ONLY"; then EXTERNAL=0; fi
WORK="$(mktemp -d /tmp/burrow-bench.XXXXXX)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# Our binaries live in target/release whatever the caller exported.
unset CARGO_BUILD_TARGET
echo "== building (release)"
cargo build -q --release -p burrow-core -p burrow-bench --manifest-path "$ROOT/Cargo.toml"
BENCH="$ROOT/target/release/burrow-bench"
BURROW="$ROOT/target/release/burrow"

TOOLS="${BURROW_BENCH_TOOLS:-/tmp/bench-tools}"
if [ "$EXTERNAL" = 1 ]; then
  echo "== installing contenders (nginx from Debian; rathole and bore from crates.io)"
  if [ ! -f /usr/lib/nginx/modules/ngx_stream_module.so ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx libnginx-mod-stream libssl-dev pkg-config >/dev/null
  fi
  # rathole's lock file pins a `time` that no longer builds: resolve fresh.
  if picked "rathole tls"; then [ -x "$TOOLS/bin/rathole" ] || cargo install -q --root "$TOOLS" rathole; fi
  if picked bore; then [ -x "$TOOLS/bin/bore" ] || cargo install -q --locked --root "$TOOLS" bore-cli; fi
fi
ulimit -n "$(ulimit -Hn)"

# freeport [IP]: a TCP port free on IP (default 127.0.0.1) right now.
freeport() { python3 -c 'import socket,sys; s=socket.socket(); s.bind((sys.argv[1],0)); print(s.getsockname()[1])' "${1:-127.0.0.1}"; }
# start NAME CMD...: runs CMD in the background with its output in $WORK/NAME.log
start() { local name="$1"; shift; "$@" >"$WORK/$name.log" 2>&1 & PIDS+=($!); eval "PID_$name=$!"; }
# wait_for NAME PATTERN: waits for PATTERN in NAME's log and prints the matching line
wait_for() {
  for _ in $(seq 1 300); do
    if grep -q "$2" "$WORK/$1.log" 2>/dev/null; then grep -m1 "$2" "$WORK/$1.log"; return 0; fi
    sleep 0.1
  done
  echo "timed out waiting for '$2' from $1:" >&2; cat "$WORK/$1.log" >&2; return 1
}

echo "== certificates (ECDSA P-256, the same key for every contender that terminates)"
cd "$WORK"
make_certs "bench CA" "DNS:bench.test,DNS:agent.bench.test,DNS:edge.bench.test,DNS:http.bench.test,DNS:localhost,IP:127.0.0.1"

echo "== services and contenders"
start echo_tls "$BENCH" echo --cert leaf.pem --key leaf.key
start echo_plain "$BENCH" echo
TLS_UP=$(wait_for echo_tls listening | awk '{print $2}')
PLAIN_UP=$(wait_for echo_plain listening | awk '{print $2}')

# One edge per burrow mode, so that no mode's RSS is measured in a heap another
# mode's connections already grew.
for mode in upstream agent edge; do
  printf 'open = true\nstate_dir = "%s"\n' "$WORK/state-$mode" > "edge-$mode.toml"
  start "edge_$mode" "$BURROW" edge --config "edge-$mode.toml" --log warn
done
agent_args() {
  local tunnel
  tunnel=$(wait_for "edge_$1" "tunnel:" | awk '{print $2}')
  echo --server-addr "$tunnel" --root-cas "$WORK/state-$1/ca.pem" --log warn
}
EDGE_UPSTREAM=$(wait_for edge_upstream "tls:" | awk '{print $2}')
EDGE_AGENT=$(wait_for edge_agent "tls:" | awk '{print $2}')
EDGE_EDGE=$(wait_for edge_edge "tls:" | awk '{print $2}')
# shellcheck disable=SC2046
start agent_upstream "$BURROW" tls "$TLS_UP" --url tls://bench.test $(agent_args upstream)
# shellcheck disable=SC2046
start agent_agent "$BURROW" tls "$PLAIN_UP" --terminate-at agent --url tls://agent.bench.test --crt leaf.pem --key leaf.key $(agent_args agent)
# shellcheck disable=SC2046
start agent_edge "$BURROW" tls "$PLAIN_UP" --url tls://edge.bench.test --crt leaf.pem --key leaf.key $(agent_args edge)
for a in agent_upstream agent_agent agent_edge; do wait_for "$a" Forwarding >/dev/null; done

# name|address|sni|pids whose RSS and CPU count[|sockets one of its processes holds per
# proxied connection: rathole's and bore's servers hold two, and so cannot hold 10,000
# idle connections under this machine's hard limit of open files]
CONTENDERS=(
  "direct|$TLS_UP|bench.test|$PID_echo_tls"
  "burrow upstream|$EDGE_UPSTREAM|bench.test|$PID_edge_upstream $PID_agent_upstream"
  "burrow agent|$EDGE_AGENT|agent.bench.test|$PID_edge_agent $PID_agent_agent"
  "burrow edge|$EDGE_EDGE|edge.bench.test|$PID_edge_edge $PID_agent_edge"
)

echo "== cluster: etcd, edge a on 127.0.0.2 and edge b on 127.0.0.3, an agent on a"
ETCD_C=$(freeport); ETCD_P=$(freeport)
ETCD_URL="http://127.0.0.1:$ETCD_C"
start etcd etcd --name bench --data-dir "$WORK/etcd" \
  --listen-client-urls "$ETCD_URL" --advertise-client-urls "$ETCD_URL" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_P" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_P" \
  --initial-cluster "bench=http://127.0.0.1:$ETCD_P"
wait_for etcd "ready to serve client requests" >/dev/null
for e in a:2 b:3; do
  id="${e%%:*}"; ip="127.0.0.${e##*:}"
  printf 'open = true\ntunnel_addr = "%s:0"\ntls_addr = "%s:0"\n\n[cluster]\netcd = ["%s"]\nedge_id = "%s"\nlink_addr = "%s:%s"\nprefix = "/bench/"\n' \
    "$ip" "$ip" "$ETCD_URL" "$id" "$ip" "$(freeport "$ip")" > "cluster-$id.toml"
  start "cluster_$id" "$BURROW" edge --config "cluster-$id.toml" --log warn
done
CLUSTER_A=$(wait_for cluster_a "tls:" | awk '{print $2}')
CLUSTER_B=$(wait_for cluster_b "tls:" | awk '{print $2}')
start cluster_agent "$BURROW" tls "$TLS_UP" --url tls://bench.test --log warn \
  --server-addr "$(wait_for cluster_a "tunnel:" | awk '{print $2}')" \
  --root-cas "$(wait_for cluster_a "root-cas:" | awk '{print $2}')"
wait_for cluster_agent Forwarding >/dev/null
CONTENDERS+=(
  "cluster one edge|$CLUSTER_A|bench.test|$PID_cluster_a $PID_cluster_agent"
  "cluster hop b->a|$CLUSTER_B|bench.test|$PID_cluster_a $PID_cluster_b $PID_cluster_agent"
)

if [ "$EXTERNAL" = 1 ]; then
  NGX_PRE=$(freeport); NGX_SSL=$(freeport)
  # nginx_start NAME SERVER-BLOCK: one nginx per mode, so each one's RSS is its own.
  nginx_start() {
    mkdir -p "$WORK/$1/logs"
    cat > "$WORK/$1.conf" <<EOF
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes auto;
worker_rlimit_nofile $(ulimit -Hn);
daemon off;
pid $WORK/$1/nginx.pid;
error_log $WORK/$1/error.log warn;
events { worker_connections $(( $(ulimit -Hn) - 100 )); }
stream {
  proxy_half_close on;
  $2
}
EOF
    start "$1" nginx -p "$WORK/$1" -c "$WORK/$1.conf"
  }
  nginx_start nginx_pre "server { listen 127.0.0.1:$NGX_PRE; ssl_preread on; proxy_pass $TLS_UP; }"
  nginx_start nginx_ssl "server {
    listen 127.0.0.1:$NGX_SSL ssl;
    ssl_certificate $WORK/leaf.pem; ssl_certificate_key $WORK/leaf.key;
    ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache off; ssl_session_tickets off;
    proxy_pass $PLAIN_UP;
  }"
  sleep 1
  NGINX_PRE_PIDS="$PID_nginx_pre $(pgrep -P "$PID_nginx_pre" | tr '\n' ' ')"
  NGINX_SSL_PIDS="$PID_nginx_ssl $(pgrep -P "$PID_nginx_ssl" | tr '\n' ' ')"

  if picked "rathole tls"; then
  RH=$(freeport); RH_SVC=$(freeport)
  openssl pkcs12 -export -out identity.pfx -inkey leaf.key -in leaf.pem -passout pass:bench 2>/dev/null
  cat > rathole-server.toml <<EOF
[server]
bind_addr = "127.0.0.1:$RH"
[server.transport]
type = "tls"
[server.transport.tls]
pkcs12 = "$WORK/identity.pfx"
pkcs12_password = "bench"
[server.services.bench]
token = "bench-token"
bind_addr = "127.0.0.1:$RH_SVC"
EOF
  cat > rathole-client.toml <<EOF
[client]
remote_addr = "localhost:$RH"
[client.transport]
type = "tls"
[client.transport.tls]
trusted_root = "$WORK/ca.pem"
hostname = "localhost"
[client.services.bench]
token = "bench-token"
local_addr = "$TLS_UP"
EOF
  start rathole_server "$TOOLS/bin/rathole" -s rathole-server.toml
  start rathole_client "$TOOLS/bin/rathole" -c rathole-client.toml
  wait_for rathole_client "Control channel established" >/dev/null
  CONTENDERS+=("rathole tls|127.0.0.1:$RH_SVC|bench.test|$PID_rathole_server $PID_rathole_client|2")
  fi

  if picked bore; then
  BORE_MIN=$(freeport)
  start bore_server "$TOOLS/bin/bore" server --min-port "$BORE_MIN" --max-port "$((BORE_MIN + 50))" --bind-addr 127.0.0.1
  sleep 0.5
  start bore_client "$TOOLS/bin/bore" local "${TLS_UP##*:}" --local-host 127.0.0.1 --to 127.0.0.1
  BORE_ADDR=$(wait_for bore_client "listening at" | sed 's/.*listening at //' | tr -d '[:space:]' | sed 's/\x1b\[[0-9;]*m//g')
  CONTENDERS+=("bore|$BORE_ADDR|bench.test|$PID_bore_server $PID_bore_client|2")
  fi

  CONTENDERS+=(
    "nginx preread|127.0.0.1:$NGX_PRE|bench.test|$NGINX_PRE_PIDS"
    "nginx ssl|127.0.0.1:$NGX_SSL|bench.test|$NGINX_SSL_PIDS"
  )
fi

# proc_sum PIDS FILE AWK-PROGRAM: one /proc/PID/FILE figure, summed over the processes.
proc_sum() { local t=0; for p in $1; do t=$((t + $(awk "$3" "/proc/$p/$2" 2>/dev/null || echo 0))); done; echo "$t"; }
rss_kib() { proc_sum "$1" status '/VmRSS/{print $2}'; }
# cpu_ticks PIDS: user + system CPU time the processes used so far, in clock ticks.
cpu_ticks() { proc_sum "$1" stat '{print $14 + $15}'; }
# machine_ticks: "busy total" clock ticks of the whole machine so far (/proc/stat).
machine_ticks() { awk '/^cpu /{t=0; for(i=2;i<=NF;i++) t+=$i; print t-$5-$6, t}' /proc/stat; }

RESULTS="$WORK/results.jsonl"
: > "$RESULTS"
# record NAME RUN JSON [EXTRA-JSON]: appends one result line (EXTRA's keys merged in).
record() {
  local extra="${4:-}"
  [ -n "$extra" ] || extra='{}'
  python3 -c 'import json,sys; d=json.loads(sys.argv[3]); d.update(json.loads(sys.argv[4])); d["contender"]=sys.argv[1]; d["run"]=int(sys.argv[2]); print(json.dumps(d))' "$1" "$2" "$3" "$extra" >> "$RESULTS"
}
TICKS_PER_S=$(getconf CLK_TCK)

# measure NAME RUN LABEL ARGS...: one workload run; a failure is recorded, not fatal.
measure() {
  local name="$1" run="$2" label="$3"; shift 3
  local out ticks t0 m0
  ticks=$(cpu_ticks "$pids")
  t0=$(date +%s.%N)
  m0=$(machine_ticks)
  # A workload that hangs (a contender that loses a close) is cut off and recorded as failed.
  if out=$(timeout $((SECS * 10 + 30)) "$BENCH" run "${common[@]}" --secs "$SECS" "$@" 2>"$WORK/last-error.log"); then
    # CPU seconds the contender's own processes (server, or relays) spent on the run,
    # and the run's wall time (connecting and closing included, as for the CPU).
    local cpu
    # The share of the whole machine's cores that was busy (every process, the client too).
    cpu=$(python3 -c 'import sys; b0, t0, b1, t1 = map(int, (sys.argv[6] + " " + sys.argv[7]).split()); print("{\"cpu_s\": %.3f, \"wall_s\": %.3f, \"machine_busy\": %.3f}" % ((int(sys.argv[1]) - int(sys.argv[2])) / int(sys.argv[3]), float(sys.argv[5]) - float(sys.argv[4]), (b1 - b0) / max(t1 - t0, 1)))' "$(cpu_ticks "$pids")" "$ticks" "$TICKS_PER_S" "$t0" "$(date +%s.%N)" "$m0" "$(machine_ticks)")
    record "$name" "$run" "$(echo "$out" | sed "s/\"workload\":\"[a-z]*\"/\"workload\":\"$label\"/")" "$cpu"
  else
    echo "   $label failed: $(grep -m1 -v '^ ' "$WORK/last-error.log")"
    record "$name" "$run" "{\"workload\":\"$label\",\"error\":true}"
  fi
}

if [ -n "${BENCH_ONLY:-}" ]; then
  kept=()
  for entry in "${CONTENDERS[@]}"; do
    if echo "${entry%%|*}" | grep -qE "$BENCH_ONLY"; then kept+=("$entry"); fi
  done
  CONTENDERS=("${kept[@]}")
fi

# Idle first, for every contender, while each one's heap is as fresh as the others'.
for entry in "${CONTENDERS[@]}"; do
  IFS='|' read -r name addr sni pids fds <<<"$entry"
  echo "== idle: $name ($addr)"
  common=(--target "$addr" --sni "$sni" --ca "$WORK/ca.pem")
  for n in $IDLE_COUNTS; do
    if [ $((n * ${fds:-1} + 500)) -gt "$(ulimit -Hn)" ]; then
      echo "   idle $n skipped: needs $((n * fds)) open files in one process, the limit is $(ulimit -Hn)"
      record "$name" 1 "{\"workload\":\"idle\",\"conns\":$n,\"skipped\":\"open-file limit\"}"
      continue
    fi
    before=$(rss_kib "$pids")
    # The idle client holds its connections until its stdin (a FIFO) closes.
    rm -f "$WORK/hold"; mkfifo "$WORK/hold"
    "$BENCH" idle "${common[@]}" --conns "$n" <"$WORK/hold" >"$WORK/idle.out" 2>"$WORK/idle.err" &
    idle_pid=$!
    exec 3>"$WORK/hold"
    for _ in $(seq 1 1200); do
      grep -q ready "$WORK/idle.out" 2>/dev/null && break
      kill -0 "$idle_pid" 2>/dev/null || break
      sleep 0.1
    done
    if grep -q ready "$WORK/idle.out"; then
      after=$(rss_kib "$pids")
      record "$name" 1 "{\"workload\":\"idle\",\"conns\":$n,\"rss_before_kib\":$before,\"rss_after_kib\":$after}"
    else
      echo "   idle $n failed: $(grep -m1 -v '^ ' "$WORK/idle.err")"
      record "$name" 1 "{\"workload\":\"idle\",\"conns\":$n,\"error\":true}"
    fi
    exec 3>&-
    # A contender that could not take them all leaves the client stuck connecting.
    kill "$idle_pid" 2>/dev/null || true
    wait "$idle_pid" 2>/dev/null || true
  done
done

# Then run 1 of every contender, run 2 of every contender, ...: a machine that slows
# down for a while (shared hosts do) weighs on every contender alike, not on one.
for run in $(seq 1 "$RUNS"); do
  for entry in "${CONTENDERS[@]}"; do
    IFS='|' read -r name addr sni pids fds <<<"$entry"
    echo "== run $run/$RUNS: $name ($addr)"
    common=(--target "$addr" --sni "$sni" --ca "$WORK/ca.pem")
    measure "$name" "$run" bulk1 --workload bulk --conns 1
    measure "$name" "$run" bulk16 --workload bulk --conns 16
    measure "$name" "$run" connect --workload connect --conns 4
    measure "$name" "$run" rr --workload rr --conns 1
  done
  # One session's bulk throughput with its edge and agent pinned to one core, then on
  # every core (issue 18: does the tunnel use them?). The client and echo are not pinned.
  if picked "burrow upstream" && [ "$(nproc)" -gt 1 ]; then
    pids="$PID_edge_upstream $PID_agent_upstream"
    common=(--target "$EDGE_UPSTREAM" --sni bench.test --ca "$WORK/ca.pem")
    echo "== run $run/$RUNS: burrow upstream, edge + agent on one core, then on all $(nproc)"
    for p in $pids; do taskset -a -p -c 0 "$p" >/dev/null; done
    measure "burrow upstream" "$run" bulk16_1core --workload bulk --conns 16
    for p in $pids; do taskset -a -p -c "0-$(($(nproc) - 1))" "$p" >/dev/null; done
    measure "burrow upstream" "$run" bulk16_allcores --workload bulk --conns 16
  fi
done

# HTTP rows (issue 16): keep-alive requests/s and latency through burrow's HTTPS reverse
# proxy (edge termination), nginx as a TLS-terminating reverse proxy (keep-alive
# upstream) and straight to the app; HTTP/1.1 with wrk, h2 with h2load.
HTTP_PICK=1
if [ -n "${BENCH_ONLY:-}" ] && ! printf 'http direct\nhttp burrow\nhttp nginx\n' | grep -qE "$BENCH_ONLY"; then HTTP_PICK=0; fi
if [ "$HTTP_PICK" = 1 ] && ! { command -v wrk && command -v h2load; } >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nghttp2-client >/dev/null
  else
    echo "== http rows skipped: wrk and h2load are missing (apt-get install wrk nghttp2-client)"
    HTTP_PICK=0
  fi
fi
if [ "$HTTP_PICK" = 1 ]; then
  echo "== http: the app, burrow http (edge termination), nginx http"
  start http_app "$BENCH" http-app
  APP=$(wait_for http_app listening | awk '{print $2}')
  printf 'open = true\nstate_dir = "%s"\n' "$WORK/state-http" > edge-http.toml
  start edge_http "$BURROW" edge --config edge-http.toml --log warn
  EDGE_HTTP=$(wait_for edge_http "tls:" | awk '{print $2}')
  # shellcheck disable=SC2046
  start agent_http "$BURROW" http "$APP" --url https://http.bench.test --crt leaf.pem --key leaf.key $(agent_args http)
  wait_for agent_http Forwarding >/dev/null
  # wrk takes the TLS name (SNI and Host) from the URL and the address from here.
  printf 'wrk.resolve = function(host, service) wrk.addrs = wrk.lookup("127.0.0.1", service) end\n' > resolve.lua
  HTTP_CONTENDERS=(
    "http direct|http://$APP|$PID_http_app"
    "http burrow|https://http.bench.test:${EDGE_HTTP##*:}|$PID_edge_http $PID_agent_http"
  )
  if [ "$EXTERNAL" = 1 ]; then
    NGX_HTTP=$(freeport)
    mkdir -p "$WORK/nginx_http/logs"
    cat > "$WORK/nginx_http.conf" <<EOF
worker_processes auto;
worker_rlimit_nofile $(ulimit -Hn);
daemon off;
pid $WORK/nginx_http/nginx.pid;
error_log $WORK/nginx_http/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  # As many requests per client connection as the load tools send (nginx's default of
  # 1000 closes h2load's connections mid-run, which then stops using them).
  keepalive_requests 100000000;
  upstream app { server $APP; keepalive 64; }
  server {
    listen 127.0.0.1:$NGX_HTTP ssl http2;
    ssl_certificate $WORK/leaf.pem; ssl_certificate_key $WORK/leaf.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
EOF
    start nginx_http nginx -p "$WORK/nginx_http" -c "$WORK/nginx_http.conf"
    sleep 1
    HTTP_CONTENDERS+=("http nginx|https://http.bench.test:$NGX_HTTP|$PID_nginx_http $(pgrep -P "$PID_nginx_http" | tr '\n' ' ')")
  fi
  if [ -n "${BENCH_ONLY:-}" ]; then
    kept=()
    for entry in "${HTTP_CONTENDERS[@]}"; do
      if echo "${entry%%|*}" | grep -qE "$BENCH_ONLY"; then kept+=("$entry"); fi
    done
    HTTP_CONTENDERS=("${kept[@]}")
  fi
  # http_measure NAME RUN LABEL TOOL ARGS...: one wrk or h2load run, parsed to JSON.
  http_measure() {
    local name="$1" run="$2" label="$3" tool="$4"; shift 4
    local ticks out cpu
    ticks=$(cpu_ticks "$pids")
    if out=$(timeout $((SECS * 10 + 30)) "$tool" "$@" 2>&1); then
      cpu=$(python3 -c 'import sys; print("%.3f" % ((int(sys.argv[1]) - int(sys.argv[2])) / int(sys.argv[3])))' "$(cpu_ticks "$pids")" "$ticks" "$TICKS_PER_S")
      record "$name" "$run" "$(printf '%s' "$out" | python3 "$ROOT/bench/http_parse.py" "$tool" "$label" "$cpu")"
    else
      echo "   $label failed: $(echo "$out" | tail -2)"
      record "$name" "$run" "{\"workload\":\"$label\",\"error\":true}"
    fi
  }
  for run in $(seq 1 "$RUNS"); do
    for entry in "${HTTP_CONTENDERS[@]}"; do
      IFS='|' read -r name url pids <<<"$entry"
      echo "== run $run/$RUNS: $name ($url)"
      for size in 1k 64k; do
        http_measure "$name" "$run" "h1_$size" wrk -t2 -c64 -d"${SECS}s" --latency -s resolve.lua "$url/$size"
        http_measure "$name" "$run" "h2_$size" h2load -t2 -c16 -m16 -D"$SECS" --connect-to="127.0.0.1:${url##*:}" "$url/$size"
      done
    done
  done
fi

echo "== bind latency (burrow)"
TUNNEL=$(wait_for edge_edge "tunnel:" | awk '{print $2}')
record "burrow" 1 "$("$BENCH" bind --server-addr "$TUNNEL" --root-cas "$WORK/state-edge/ca.pem" --upstream "$PLAIN_UP" --count "$BIND_COUNT")"

echo "== cluster lookup cost ($LOOKUP_ROUTES names cached)"
record "cluster" 1 "$("$BENCH" lookup --etcd "$ETCD_URL" --routes "$LOOKUP_ROUTES")"

echo "== TLS server CPU per full handshake, in memory: burrow's suite choice vs the client's order"
record "burrow" 1 "$("$BENCH" handshakes "${HANDSHAKES[@]}")"

python3 "$ROOT/bench/report.py" "$RESULTS" "$ROOT/bench/results$([ "$QUICK" = 1 ] && echo -quick).json"
