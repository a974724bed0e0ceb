#!/usr/bin/env python3
"""Turns bench/run.sh's JSON lines into one table (medians, ratios to direct) and a JSON file."""
import json
import os
import statistics
import sys
from collections import defaultdict

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
by = defaultdict(list)
for r in rows:
    by[(r["contender"], r["workload"], r.get("conns"))].append(r)
    if r.get("error"):
        # Failed runs carry no connection count; file them under the workload's usual one.
        usual = {"bulk1": 1, "bulk16": 16, "bulk16_1core": 16, "bulk16_allcores": 16, "connect": 4, "rr": 1}.get(r["workload"])
        by[(r["contender"], r["workload"], usual)].append(r)
failures = [(r["contender"], r["workload"]) for r in rows if r.get("error")]


def median(contender, workload, conns, get):
    runs = by.get((contender, workload, conns), [])
    values = [v for v in (get(r) for r in runs if not r.get("error")) if v is not None]
    return statistics.median(values) if values else None


contenders = []
http_contenders = []
for r in rows:
    kind = http_contenders if r["contender"].startswith("http ") else contenders
    if r["contender"] not in kind and r["workload"] not in ("bind", "lookup", "handshakes"):
        kind.append(r["contender"])
HTTP_WORKLOADS = ["h1_1k", "h1_64k", "h2_1k", "h2_64k"]
http_summary = {}
for c in http_contenders:
    http_summary[c] = {
        w: {
            "req_per_s": median(c, w, None, lambda r: r["req_per_s"]),
            "p50_us": median(c, w, None, lambda r: r.get("p50_us")),
            "p99_us": median(c, w, None, lambda r: r.get("p99_us")),
            "mean_us": median(c, w, None, lambda r: r.get("mean_us")),
            "cpu_s": median(c, w, None, lambda r: r.get("cpu_s")),
        }
        for w in HTTP_WORKLOADS
    }

summary = {}
for c in contenders:
    s = {
        "bulk1_mib_s": median(c, "bulk1", 1, lambda r: r["mib_per_s"]),
        "bulk16_mib_s": median(c, "bulk16", 16, lambda r: r["mib_per_s"]),
        "connect_per_s": median(c, "connect", 4, lambda r: r["per_s"]),
        "connect_p50_us": median(c, "connect", 4, lambda r: r["connect"]["p50_us"]),
        "connect_p99_us": median(c, "connect", 4, lambda r: r["connect"]["p99_us"]),
        "rr_p50_us": median(c, "rr", 1, lambda r: r["latency"]["p50_us"]),
        "rr_p99_us": median(c, "rr", 1, lambda r: r["latency"]["p99_us"]),
        "rr_p999_us": median(c, "rr", 1, lambda r: r["latency"]["p999_us"]),
        "rr_per_s": median(c, "rr", 1, lambda r: r["per_s"]),
        # CPU the contender's own processes spent per new connection: the TLS server's
        # handshake for direct, the relays' work for everyone else.
        "connect_cpu_us": median(
            c, "connect", 4, lambda r: r["cpu_s"] * 1e6 / max(r["connect"]["count"], 1) if "cpu_s" in r else None
        ),
    }
    for r in rows:
        if r["contender"] == c and r["workload"] == "idle" and r.get("skipped"):
            s[f"idle_rss_kib_per_conn_{r['conns']}"] = "n/a"
        elif r["contender"] == c and r["workload"] == "idle" and r["conns"] and not r.get("error"):
            kib = (r["rss_after_kib"] - r["rss_before_kib"]) / r["conns"]
            s[f"idle_rss_kib_per_conn_{r['conns']}"] = round(kib, 2)
    summary[c] = s

bind = [r for r in rows if r["workload"] == "bind"]
lookups = [r["lookup"] for r in rows if r["workload"] == "lookup"]
handshakes = [r["handshakes"] for r in rows if r["workload"] == "handshakes"]
direct = summary.get("direct", {})


def ratio(c, key):
    v, d = summary[c].get(key), direct.get(key)
    return f"{v / d:.2f}" if v and d else "-"


def fmt(v, digits=0):
    return "-" if v is None else f"{v:.{digits}f}"


print()
print("| contender | bulk 1 conn MiB/s (x direct) | bulk 16 conns MiB/s (x direct) | new conns/s (x direct) | connect p50/p99 µs | CPU µs per new conn | 1 KiB rr p50/p99/p99.9 µs | idle RSS KiB/conn |")
print("|---|---|---|---|---|---|---|---|")
for c in contenders:
    s = summary[c]
    idle = ", ".join(f"{k.rsplit('_', 1)[1]}: {v}" for k, v in s.items() if k.startswith("idle_rss"))
    print(
        f"| {c} | {fmt(s['bulk1_mib_s'])} ({ratio(c, 'bulk1_mib_s')}) | {fmt(s['bulk16_mib_s'])} ({ratio(c, 'bulk16_mib_s')}) "
        f"| {fmt(s['connect_per_s'])} ({ratio(c, 'connect_per_s')}) | {fmt(s['connect_p50_us'])}/{fmt(s['connect_p99_us'])} | {fmt(s['connect_cpu_us'])} "
        f"| {fmt(s['rr_p50_us'])}/{fmt(s['rr_p99_us'])}/{fmt(s['rr_p999_us'])} | {idle or '-'} |"
    )
if direct.get("rr_p50_us") is not None:
    for c in contenders:
        if c.startswith("burrow"):
            s = summary[c]
            print(f"\n{c}: added rr latency p50 {s['rr_p50_us'] - direct['rr_p50_us']:.0f} µs, p99 {s['rr_p99_us'] - direct['rr_p99_us']:.0f} µs over direct", end="")
    print()
for b in bind:
    print(f"burrow bind latency (forward() to first byte echoed): p50 {b['bind']['p50_us'] / 1000:.2f} ms, p99 {b['bind']['p99_us'] / 1000:.2f} ms over {b['bind']['count']} binds")



def target(name, value, goal, ok):
    """One line of the targets list: measured value, goal, met or missed."""
    if value is None:
        print(f"- {name}: not measured (goal {goal})")
        return
    print(f"- {name}: {value} (goal {goal}): {'met' if ok else 'MISSED'}")


def get(c, key):
    return summary.get(c, {}).get(key)


def vs(name, a, b, key, goal, at_most=False):
    """A target on contender a's `key` divided by contender b's: at least (or at most) goal."""
    va, vb = get(a, key), get(b, key)
    sign = "<=" if at_most else ">="
    if not (va and vb):
        return target(name, None, f"{sign} {goal}x", False)
    r = va / vb
    target(name, f"{r:.2f}x", f"{sign} {goal}x", r <= goal if at_most else r >= goal)


for hs in handshakes:
    print(f"TLS server CPU per full handshake (in memory, median of {hs['rounds']} rounds of {hs['count']}): "
          f"{hs['burrow_us']:.0f} µs ({hs['burrow_suite']}) with burrow's suite choice, "
          f"{hs['follow_client_us']:.0f} µs ({hs['follow_client_suite']}) following the client's order "
          f"({hs['burrow_over_follow_client']:.2f}x)")

one, hop = "cluster one edge", "cluster hop b->a"
for lk in lookups:
    print(f"cluster lookup: {lk['ns_per_lookup']:.0f} ns with {lk['routes']} names cached, "
          f"{lk['ns_per_lookup_one_route']:.0f} ns with one ({lk['ns_per_lookup'] / lk['ns_per_lookup_one_route']:.2f}x)")

print("\nTargets (issue 15, the inter-edge hop against one edge, same run):")
for key, what in [("connect_per_s", "new conns/s"), ("bulk1_mib_s", "bulk 1 conn"), ("bulk16_mib_s", "bulk 16 conns")]:
    vs(f"hop {what} vs one edge", hop, one, key, 0.75)

print("\nTargets (issue 7):")
up, rh, ngx, pre = "burrow upstream", "rathole tls", "nginx ssl", "nginx preread"
vs("passthrough bulk 16 conns vs direct", up, "direct", "bulk16_mib_s", 0.45)
vs("passthrough bulk 16 conns vs rathole tls", up, rh, "bulk16_mib_s", 1.2)
vs("passthrough new conns/s vs direct", up, "direct", "connect_per_s", 0.85)
vs("edge-termination new conns/s vs nginx ssl", "burrow edge", ngx, "connect_per_s", 1.0)
modes = [c for c in contenders if c.startswith("burrow")]
if direct.get("rr_p50_us") is not None and modes:
    p50 = max(get(c, "rr_p50_us") - direct["rr_p50_us"] for c in modes if get(c, "rr_p50_us") is not None)
    p99 = max(get(c, "rr_p99_us") - direct["rr_p99_us"] for c in modes if get(c, "rr_p99_us") is not None)
    target("added rr latency p50, worst burrow mode", f"{p50:.0f} µs", "<= 150 µs", p50 <= 150)
    target("added rr latency p99, worst burrow mode", f"{p99:.0f} µs", "<= 1000 µs", p99 <= 1000)
rss = [(c, get(c, "idle_rss_kib_per_conn_10000")) for c in modes]
rss = [(c, v) for c, v in rss if isinstance(v, (int, float))]
if rss:
    c, v = max(rss, key=lambda x: x[1])
    target("idle RSS per connection at 10,000, edge + agent, worst mode", f"{v} KiB ({c})", "<= 24 KiB", v <= 24)
for b in bind:
    v = b["bind"]["p50_us"] / 1000
    target("bind latency p50", f"{v:.2f} ms", "<= 5 ms", v <= 5)

print("\nTargets (issue 18, performance round two, same run):")
if get(up, "connect_cpu_us") and get(pre, "connect_cpu_us"):
    print(f"- (relay CPU per new passthrough connection: burrow edge + agent {get(up, 'connect_cpu_us'):.0f} µs, "
          f"nginx ssl_preread {get(pre, 'connect_cpu_us'):.0f} µs)")
vs("relay CPU per new passthrough connection, edge + agent, vs nginx ssl_preread", up, pre, "connect_cpu_us", 1.6, at_most=True)
vs("passthrough new conns/s vs nginx ssl_preread", up, pre, "connect_per_s", 0.9)
vs("passthrough bulk 16 conns vs direct", up, "direct", "bulk16_mib_s", 0.55)
vs("passthrough bulk 16 conns vs rathole tls", up, rh, "bulk16_mib_s", 1.5)
vs("edge-termination new conns/s vs nginx ssl", "burrow edge", ngx, "connect_per_s", 1.4)
if rss:
    c, v = max(rss, key=lambda x: x[1])
    target("idle RSS per connection at 10,000, edge + agent, worst mode", f"{v} KiB ({c})", "<= 12 KiB", v <= 12)
one_core = median(up, "bulk16_1core", 16, lambda r: r["mib_per_s"])
all_cores = median(up, "bulk16_allcores", 16, lambda r: r["mib_per_s"])
if one_core and all_cores:
    r = all_cores / one_core
    # Cores the edge and agent kept busy in each mode: what the tunnel could use.
    busy = lambda w: median(up, w, 16, lambda x: x["cpu_s"] / x["wall_s"] if "wall_s" in x else None)
    machine = lambda w: median(up, w, 16, lambda x: x.get("machine_busy"))
    cores = (f"; edge + agent busy {fmt(busy('bulk16_1core'), 2)} / {fmt(busy('bulk16_allcores'), 2)} cores, "
             f"the whole machine {fmt((machine('bulk16_1core') or 0) * 100)} / {fmt((machine('bulk16_allcores') or 0) * 100)} % busy")
    target("one session's bulk 16 conns, edge + agent on every core vs pinned to one (taskset)",
           f"{all_cores:.0f} / {one_core:.0f} MiB/s = {r:.2f}x{cores}", ">= 1.7x", r >= 1.7)
else:
    target("one session's bulk, every core vs one", None, ">= 1.7x", False)
soak_path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "soak.json")
if os.path.exists(soak_path):
    soak = json.load(open(soak_path))
    r = soak["rss_ratio_end_to_min5"]["total"]
    target(f"RSS after {soak['minutes']} min of steady load vs minute 5, edge + agents (bench/soak.sh, its last run)",
           f"{r:.2f}x", "<= 1.1x", r <= 1.1)
else:
    target("RSS after 30 min of steady load vs minute 5", None, "<= 1.1x (run bench/soak.sh)", False)

if http_contenders:
    base = "http nginx" if "http nginx" in http_summary else None
    print("\n| http contender | " + " | ".join(
        f"{w.replace('_', ' ')} req/s" + (" (x nginx)" if base else "") + (" p50/p99 ms" if w.startswith("h1") else " mean ms")
        for w in HTTP_WORKLOADS) + " |")
    print("|---|" + "---|" * len(HTTP_WORKLOADS))
    for c in http_contenders:
        cells = []
        for w in HTTP_WORKLOADS:
            m = http_summary[c][w]
            b = http_summary[base][w]["req_per_s"] if base else None
            x = f" ({m['req_per_s'] / b:.2f})" if b and m["req_per_s"] else ""
            lat = (f"{fmt((m['p50_us'] or 0) / 1000, 2)}/{fmt((m['p99_us'] or 0) / 1000, 2)}" if w.startswith("h1")
                   else fmt((m["mean_us"] or 0) / 1000, 2))
            cells.append(f"{fmt(m['req_per_s'])}{x} {lat}")
        print(f"| {c} | " + " | ".join(cells) + " |")
    print("\nTargets (issue 16, burrow's HTTPS reverse proxy against nginx's, same run):")
    bur, ngx_h = http_summary.get("http burrow"), http_summary.get("http nginx")
    for w in HTTP_WORKLOADS:
        if not (bur and ngx_h and bur[w]["req_per_s"] and ngx_h[w]["req_per_s"]):
            print(f"- {w}: not measured against nginx")
            continue
        r = bur[w]["req_per_s"] / ngx_h[w]["req_per_s"]
        lat_key = "p99_us" if w.startswith("h1") else "mean_us"
        lb, ln = bur[w][lat_key], ngx_h[w][lat_key]
        lat_ok = lb is not None and ln is not None and lb <= ln
        target(f"{w} req/s vs nginx ({lat_key[:-3]} {fmt((lb or 0) / 1000, 2)} vs {fmt((ln or 0) / 1000, 2)} ms)",
               f"{r:.2f}x", ">= 0.8x at equal or lower latency", r >= 0.8 and lat_ok)

for c, w in failures:
    print(f"FAILED: {c} {w}")
json.dump({"summary": summary, "http": http_summary, "bind": [b["bind"] for b in bind], "lookup": lookups, "handshakes": handshakes, "runs": rows}, open(sys.argv[2], "w"), indent=1)
print(f"\nwritten: {sys.argv[2]}")
