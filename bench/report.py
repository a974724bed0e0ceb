#!/usr/bin/env python3
"""Turns bench/run.sh's JSON lines into one table (medians, ratios to direct) and a JSON file."""
import json
import statistics
import sys
from collections import defaultdict

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
by = defaultdict(list)
for r in rows:
    by[(r["contender"], r["workload"], r.get("conns"))].append(r)
    if r.get("error"):
        # Failed runs carry no connection count; file them under the workload's usual one.
        usual = {"bulk1": 1, "bulk16": 16, "connect": 4, "rr": 1}.get(r["workload"])
        by[(r["contender"], r["workload"], usual)].append(r)
failures = [(r["contender"], r["workload"]) for r in rows if r.get("error")]


def median(contender, workload, conns, get):
    runs = by.get((contender, workload, conns), [])
    values = [get(r) for r in runs if not r.get("error")]
    return statistics.median(values) if values else None


contenders = []
for r in rows:
    if r["contender"] not in contenders and r["workload"] != "bind":
        contenders.append(r["contender"])

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
    }
    for r in rows:
        if r["contender"] == c and r["workload"] == "idle" and r["conns"] and not r.get("error"):
            kib = (r["rss_after_kib"] - r["rss_before_kib"]) / r["conns"]
            s[f"idle_rss_kib_per_conn_{r['conns']}"] = round(kib, 2)
    summary[c] = s

bind = [r for r in rows if r["workload"] == "bind"]
direct = summary.get("direct", {})


def ratio(c, key):
    v, d = summary[c].get(key), direct.get(key)
    return f"{v / d:.2f}" if v and d else "-"


def fmt(v, digits=0):
    return "-" if v is None else f"{v:.{digits}f}"


print()
print("| contender | bulk 1 conn MiB/s (x direct) | bulk 16 conns MiB/s (x direct) | new conns/s (x direct) | connect p50/p99 µs | 1 KiB rr p50/p99/p99.9 µs | idle RSS KiB/conn |")
print("|---|---|---|---|---|---|---|")
for c in contenders:
    s = summary[c]
    idle = ", ".join(f"{k.rsplit('_', 1)[1]}: {v}" for k, v in s.items() if k.startswith("idle_rss"))
    print(
        f"| {c} | {fmt(s['bulk1_mib_s'])} ({ratio(c, 'bulk1_mib_s')}) | {fmt(s['bulk16_mib_s'])} ({ratio(c, 'bulk16_mib_s')}) "
        f"| {fmt(s['connect_per_s'])} ({ratio(c, 'connect_per_s')}) | {fmt(s['connect_p50_us'])}/{fmt(s['connect_p99_us'])} "
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

for c, w in failures:
    print(f"FAILED: {c} {w}")
json.dump({"summary": summary, "bind": [b["bind"] for b in bind], "runs": rows}, open(sys.argv[2], "w"), indent=1)
print(f"\nwritten: {sys.argv[2]}")
