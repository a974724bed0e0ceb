#!/usr/bin/env python3
"""bench/soak.sh's summary: RSS over time per process, end ÷ minute 5, and (with
heaptrack) heap in use at minute 5 and at the end; writes bench/soak.json."""
import json
import sys

minutes, rate = int(sys.argv[1]), float(sys.argv[2])
samples = [json.loads(line) for line in open(sys.argv[3]) if line.strip()]
clients = {name: json.load(open(path)) for name, path in (("passthrough", sys.argv[4]), ("edge termination", sys.argv[5]))}
out_path = sys.argv[6]
heap_files = dict(arg.split("=", 1) for arg in sys.argv[7:])
PROCS = ["edge", "agent_upstream", "agent_edge"]


def at(seconds):
    """The sample taken closest to `seconds` into the load."""
    return min(samples, key=lambda s: abs(s["t"] - seconds))


base, end = at(300), samples[-1]
total = lambda s: sum(s[p] for p in PROCS)
ratios = {p: end[p] / base[p] for p in PROCS if base[p]}
ratios["total"] = total(end) / total(base)

marks = [m for m in (1, 5, 10, 15, 20, 25, 30, 45, 60, 90, 120) if m < minutes] + [minutes]
print(f"\nsoak: {minutes} min, {rate:g} new connections/s to each mode:")
for name, c in clients.items():
    print(f"- {name}: {c['started']} connections ({c['per_s']:.1f}/s), {c['bytes_checked'] / 2**30:.2f} GiB echoed and checked, 0 errors")
print("\n| RSS MiB | " + " | ".join(f"min {m}" for m in marks) + " | end ÷ min 5 |")
print("|---|" + "---|" * (len(marks) + 1))
for p in PROCS + ["total"]:
    value = (lambda s: total(s)) if p == "total" else (lambda s, p=p: s[p])
    cells = " | ".join(f"{value(at(m * 60)) / 1024:.1f}" for m in marks)
    print(f"| {p} | {cells} | {ratios[p]:.2f} |")

heap = {}
for name, path in heap_files.items():
    snaps, cur = [], {}
    for line in open(path):
        if line.startswith("time="):
            cur = {"t": float(line.split("=", 1)[1])}
        elif line.startswith("mem_heap_B=") and cur:
            cur["heap"] = int(line.split("=", 1)[1])
            snaps.append(cur)
    if not snaps:
        continue
    near = lambda sec: min(snaps, key=lambda s: abs(s["t"] - sec))
    h5, hend = near(300)["heap"], near(minutes * 60)["heap"]
    heap[name] = {"min5_kib": h5 // 1024, "end_kib": hend // 1024, "ratio": hend / h5 if h5 else None,
                  "peak_kib": max(s["heap"] for s in snaps) // 1024}
    print(f"heap in use, {name}: {h5 / 1024:.0f} KiB at minute 5, {hend / 1024:.0f} KiB at the end "
          f"({hend / h5:.2f}x), peak {heap[name]['peak_kib']} KiB")

json.dump({"minutes": minutes, "rate_per_mode": rate, "clients": clients, "samples": samples,
           "rss_ratio_end_to_min5": ratios, "heap": heap}, open(out_path, "w"), indent=1)
print(f"\nwrote {out_path}")
