#!/usr/bin/env python3
"""Summarises bench-controller runs (JSON files given as arguments): median (min–max) per setup.

Per-token RSS = (steady RSS median − the same build's RSS with no token resource) ÷ tokens.
Restart: Label Studio requests in the first window after a restart with valid tokens, next to
the requests the steady refresh rate alone would make in that window (no stampede: ≈ or below).
"""
import json
import statistics
import sys
from collections import defaultdict


def fmt(vals, digits=1):
    vals = [v for v in vals if v is not None]
    if not vals:
        return "—"
    f = lambda v: f"{v + 0.0:,.{digits}f}".replace("-0", "0") if round(v, digits) == 0 else f"{v:,.{digits}f}"
    med = statistics.median(vals)
    if len(vals) == 1:
        return f"{f(med)} (1 run)"
    return f"{f(med)} ({f(min(vals))}–{f(max(vals))})"


def main(paths):
    runs = defaultdict(list)
    for p in paths:
        try:
            d = json.load(open(p))
        except (OSError, ValueError) as e:
            print(f"skipped {p}: {e}", file=sys.stderr)
            continue
        runs[(d["label_studio"], d["tokens"], d["kube_qps"], d["kube_burst"])].append(d)
    cols = [
        ("runs", lambda d: 1, 0),
        ("RSS no tokens (MiB)", lambda d: d["baseline_rss_kib"] / 1024, 1),
        ("RSS steady median (MiB)", lambda d: d["steady_rss_median_kib"] / 1024, 1),
        ("RSS peak VmHWM (MiB)", lambda d: d["peak_rss_kib"] / 1024, 1),
        ("RSS per token (KiB)", lambda d: (d["steady_rss_median_kib"] - d["baseline_rss_kib"]) / d["tokens"], 1),
        ("start → all Ready (s)", lambda d: d["all_ready_secs"], 1),
        ("kube requests at start per token", lambda d: d["startup_kube_requests"] / d["tokens"], 2),
        ("refreshes in steady window", lambda d: d["refreshes"], 0),
        ("CPU per refresh (ms)", lambda d: d["cpu_ms_per_refresh"], 2),
        ("Secret writes per refresh", lambda d: d["secret_writes_per_refresh"], 2),
        ("status writes per refresh", lambda d: d["status_writes_per_refresh"], 2),
        ("kube requests per refresh", lambda d: d["kube_requests_per_refresh"], 2),
        ("kube requests/s steady", lambda d: d["kube_requests_per_s"], 1),
        ("LS requests per refresh", lambda d: d["http_requests_per_refresh"], 2),
        ("expired Secrets seen (max)", lambda d: d["expired_secrets_max"], 0),
        ("least remaining life (s)", lambda d: d["least_remaining_s"], 0),
        ("LS requests in flight (max; cap 8)", lambda d: d["ls_max_in_flight"], 0),
        ("restart: all reconciled (s)", lambda d: d["restart_all_reconciled_secs"], 1),
        ("restart: LS requests in first 60 s", lambda d: d["restart_http_requests_window"], 0),
        ("  … steady rate × 60 s", lambda d: d["http_requests_per_refresh"] * d["refreshes"] / d["steady_secs"] * d["restart_window_s"], 0),
        ("restart: RSS after 60 s (MiB)", lambda d: d["restart_rss_kib"] / 1024, 1),
        ("readyz 200 seen", lambda d: 0 if d["synced_secs"] is None else 1, 0),
    ]
    keys = sorted(runs, key=lambda k: (k[0] != "stand-in", k[1], k[2]))
    print("| figure | " + " | ".join(f"{ls}, {n:,} tokens, QPS {q}/{b}" for ls, n, q, b in keys) + " |")
    print("|---|" + "---:|" * len(keys))
    for name, f, digits in cols:
        cells = []
        for k in keys:
            if name == "runs":
                cells.append(str(len(runs[k])))
                continue
            vals = []
            for d in runs[k]:
                try:
                    vals.append(f(d))
                except (TypeError, KeyError, ZeroDivisionError):
                    vals.append(None)
            cells.append(fmt(vals, digits))
        print(f"| {name} | " + " | ".join(cells) + " |")
    loads = sorted({d["load_avg"].split()[0] for k in keys for d in runs[k]})
    print(f"\nLoad average (1 min) at the end of the runs: {', '.join(loads)}")


if __name__ == "__main__":
    main(sys.argv[1:])
