#!/usr/bin/env python3
"""Summary of a bench/proxy/run.sh output directory (runs.jsonl, rss.jsonl, large.jsonl): min / median / max over runs of
requests/s, latency p50/p99, the latency each proxy adds over the upstream in the same run and phase, the CPU
each target's process tree spent per request, and the ratios of ours to nginx's in the same run; for the large-body
phase MB/s, CPU seconds per GB and RSS (before / peak during the transfer) per direction and target.
Usage: summary.py OUT_DIR
       summary.py --per-request NAME PERF_STAT_CSV WRK_OUT SECONDS BY_DSO_TXT   (one line for run.sh --profile)"""

import json
import statistics
import sys


def mmm(xs, w=8, digits=0):
    return " ".join(f"{x:>{w}.{digits}f}" for x in (min(xs), statistics.median(xs), max(xs)))


def per_request(name, stat_csv, wrk_out, secs, by_dso):
    """CPU (kernel / user), system calls and context switches per request of one proxy under load."""
    j = next(json.loads(l.split(" ", 1)[1]) for l in open(wrk_out) if l.startswith("WRK_JSON "))
    rate = j["requests"] / (j["duration_us"] / 1e6)
    vals = {}
    for line in open(stat_csv):
        p = line.strip().split(",")
        if len(p) > 3 and p[0] and not p[0].startswith("#"):
            vals[p[2]] = float(p[0].replace("<not counted>", "0"))
    n = rate * float(secs)
    kernel = 0.0
    for line in open(by_dso):
        if "[kernel" in line:
            kernel = float(line.split("%")[0]) / 100
    cpu_us = vals.get("cpu-clock", 0) * 1000 / n
    print(f"{name:<12} {rate:>8.0f} req/s: per request {cpu_us:5.1f} us CPU ({cpu_us * kernel:4.1f} kernel, "
          f"{cpu_us * (1 - kernel):4.1f} user space), {vals.get('raw_syscalls:sys_enter', 0) / n:4.2f} system calls, "
          f"{vals.get('context-switches', 0) / n:4.2f} context switches")


def ratios(ph, base, mine, peer, label):
    """One line: requests/s of `mine` over `peer`'s, added p50 difference, CPU per request ratio (per run)."""
    ng = {r["run"]: r for r in ph if r["target"] == peer}
    ours = [r for r in ph if r["target"] == mine and r["run"] in ng and r["run"] in base]
    if not ours:
        return

    def rate(r):
        return r["requests"] / (r["duration_us"] / 1e6)

    rps_ratio = [rate(r) / rate(ng[r["run"]]) for r in ours]
    cpu_ratio = [(r["cpu_s"] / r["requests"]) / (ng[r["run"]]["cpu_s"] / ng[r["run"]]["requests"])
                 for r in ours if r["requests"] and ng[r["run"]]["cpu_s"]]
    added = [(r["p50_us"] - base[r["run"]]["p50_us"], ng[r["run"]]["p50_us"] - base[r["run"]]["p50_us"])
             for r in ours]
    print(f'{label:<21} | {mmm(rps_ratio, 8, 2)} |  added p50 - {peer}\'s: '
          f'{mmm([a - b for a, b in added], 5)} | CPU/req ratio {mmm(cpu_ratio, 5, 2)}')


def main():
    if sys.argv[1] == "--per-request":
        per_request(*sys.argv[2:7])
        return
    out = sys.argv[1]
    rows = [json.loads(l) for l in open(f"{out}/runs.jsonl")]
    try:
        rss = [json.loads(l) for l in open(f"{out}/rss.jsonl")]
    except FileNotFoundError:
        rss = []
    try:
        large = [json.loads(l) for l in open(f"{out}/large.jsonl")]
    except FileNotFoundError:
        large = []
    targets = list(dict.fromkeys(r["target"] for r in rows))
    print("(min median max over runs; latencies in microseconds; \"added\" = proxy minus upstream in the same run;")
    print(" CPU us/req = CPU of the target's process tree during the run / requests served)")
    for phase in ("throughput", "latency"):
        ph = [r for r in rows if r["phase"] == phase]
        if not ph:
            continue
        print(f"\n[{phase}: wrk -c {ph[0]['connections']}]")
        print(f'{"target":<21} | {"requests/s":^26} | {"p50":^26} | {"p99":^26} | {"CPU us/req":^20} | errors')
        for t in targets:
            rs = [r for r in ph if r["target"] == t]
            rps = [r["requests"] / (r["duration_us"] / 1e6) for r in rs]
            cpu = [r["cpu_s"] * 1e6 / r["requests"] for r in rs if r["requests"]]
            print(f'{t:<21} | {mmm(rps)} | {mmm([r["p50_us"] for r in rs])} | {mmm([r["p99_us"] for r in rs])} | '
                  f'{mmm(cpu, 6, 1)} | {sum(r["errors"] for r in rs)}')
        base = {r["run"]: r for r in ph if r["target"] == "upstream"}
        for t in targets:
            if t == "upstream":
                continue
            rs = [r for r in ph if r["target"] == t and r["run"] in base]
            a50 = [r["p50_us"] - base[r["run"]]["p50_us"] for r in rs]
            a99 = [r["p99_us"] - base[r["run"]]["p99_us"] for r in rs]
            print(f'{"added by " + t:<21} | {"":>26} | {mmm(a50)} | {mmm(a99)} |')
        # Ours against nginx, and the gate against the proxy (both: ratios within each run).
        for mine, peer, label in (("lstr-proxy", "nginx-proxy", "lstr / nginx"),
                                  ("lstr-gate", "lstr-proxy", "gate / lstr-proxy")):
            ratios(ph, base, mine, peer, label)
    if rss:
        print()
    for r in rss:
        wrk = r.get("wrk") or {}
        print(f'RSS {r["target"]:<12} idle {r["rss_idle_kib"]/1024:.1f} MiB, peak {r["rss_peak_kib"]/1024:.1f} MiB '
              f'under {r["connections"]} connections, {r.get("rss_after_kib", 0)/1024:.1f} MiB after '
              f'(process tree; {wrk.get("requests", 0)} requests, {wrk.get("errors", "?")} errors)')
    if large:
        summary_large(large)


def summary_large(large):
    """The large-body phase: per direction and target, and ours over nginx's MB/s run by run."""
    mib = large[0]["bytes"] / 1048576
    print(f"\n[large bodies: {mib:.0f} MiB, one curl transfer at a time; RSS of the target's process tree]")
    print(f'{"direction / target":<24} | {"MB/s":^26} | {"CPU s per GB":^20} | RSS before, MiB | RSS peak, MiB (max)')
    for d in ("download", "upload"):
        ds = [r for r in large if r["direction"] == d]
        for t in dict.fromkeys(r["target"] for r in ds):
            rs = [r for r in ds if r["target"] == t]
            mbs = [r["bytes"] / r["seconds"] / 1e6 for r in rs]
            cpu = [r["cpu_s"] / (r["bytes"] / 1e9) for r in rs]
            print(f'{d + " " + t:<24} | {mmm(mbs)} | {mmm(cpu, 6, 2)} | '
                  f'{max(r["rss_before_kib"] for r in rs)/1024:15.1f} | {max(r["rss_peak_kib"] for r in rs)/1024:8.1f}')
        ng = {r["run"]: r for r in ds if r["target"] == "nginx-proxy"}
        ours = [r for r in ds if r["target"] == "lstr-proxy" and r["run"] in ng]
        if ours:
            ratio = [(r["bytes"] / r["seconds"]) / (ng[r["run"]]["bytes"] / ng[r["run"]]["seconds"]) for r in ours]
            print(f'{d + " lstr / nginx":<24} | {mmm(ratio, 8, 2)} |')


if __name__ == "__main__":
    main()
