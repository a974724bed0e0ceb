#!/usr/bin/env python3
"""Turns one wrk or h2load report (stdin) into bench/run.sh's JSON: requests/s and latency.

    wrk ... | http_parse.py wrk LABEL CPU_S
    h2load ... | http_parse.py h2load LABEL CPU_S
"""
import json
import re
import sys

tool, label, cpu = sys.argv[1], sys.argv[2], float(sys.argv[3])
text = sys.stdin.read()
UNITS = {"us": 1, "ms": 1000, "s": 1_000_000}


def micros(value, unit):
    return float(value) * UNITS[unit]


out = {"workload": label, "cpu_s": cpu}
if tool == "wrk":
    out["req_per_s"] = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        out[f"p{pct}_us"] = micros(*m.groups()) if m else None
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    out["non_2xx"] = int(errors.group(1)) if errors else 0
    socket = re.search(r"Socket errors: (.*)", text)
    out["socket_errors"] = socket.group(1) if socket else ""
else:
    out["req_per_s"] = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", text).group(1))
    m = re.search(r"time for request:\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)", text)
    out["mean_us"] = micros(m.group(5), m.group(6)) if m else None
    out["max_us"] = micros(m.group(3), m.group(4)) if m else None
    failed = re.search(r"requests: \d+ total, \d+ started, \d+ done, \d+ succeeded, (\d+) failed", text)
    out["failed"] = int(failed.group(1)) if failed else None
print(json.dumps(out))
