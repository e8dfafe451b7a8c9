#!/usr/bin/env python3
"""Turns bench/measure.py results into the markdown table bench/run.sh prints (and RESULTS.md quotes).
Usage: report.py INFO.json RESULTS.json [RESULTS.json …]"""

import json
import sys

MIB = 1024.0


def fmt(v, digits=2):
    return "—" if v is None else f"{v:.{digits}f}"


def ratio(v, ours):
    if v is None or not ours:
        return "—"
    return f"{v / ours:.1f}×"


def main():
    info = json.load(open(sys.argv[1]))
    res = {}
    for p in sys.argv[2:]:
        res.update(json.load(open(p)))
    ours = res.get("ours", {})
    o_cpu = ours.get("cpu_ms_per_refresh")
    o_rss = ours.get("rss_kib_median")
    o_start = ours.get("start_s_median")

    print(f"## Results ({info['date']})\n")
    print(
        f"Machine: {info['cpu']} ×{info['cores']}, {info['mem']}, Linux {info['kernel']}. "
        f"Label Studio {info['ls_version']} on 127.0.0.1 (access-token lifetime {info['ttl']} s), "
        f"steady-state window {info['window']} s after a {info['warmup']} s warm-up, "
        f"first-token time = median of {info['starts']} cold starts.\n"
    )
    print(
        "| contender | CPU per refresh (ms) | vs ours | RSS steady, median (MiB) | RSS max (MiB) | vs ours | "
        "first token (ms) | vs ours | refreshes in window | tokens valid |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    order = ["ours", "ours-novalidate", "ours-disk", "ours-kube", "curl-jq", "requests", "sdk"]
    for slug in order:
        r = res.get(slug)
        if not r:
            continue
        rss_med = r["rss_kib_median"] / MIB
        rss_max = r["rss_kib_max"] / MIB
        rss_note = ""
        if "rss_kib_during_refresh" in r:
            rss_note = f" (+curl {r['curl_peak_kib']/MIB:.1f} +jq {r['jq_peak_kib']/MIB:.1f} while refreshing = {r['rss_kib_during_refresh']/MIB:.1f})"
        valid = f"{r['start_tokens_valid']}/{len(r['starts_s'])} starts"
        if r.get("final_token_valid") is not None:
            valid += ", last ok" if r["final_token_valid"] else ", LAST REJECTED"
        print(
            f"| {r['name']} | {fmt(r.get('cpu_ms_per_refresh'), 3)} | {ratio(r.get('cpu_ms_per_refresh'), o_cpu)} "
            f"| {rss_med:.1f}{rss_note} | {rss_max:.1f} | {ratio(r['rss_kib_median'], o_rss)} "
            f"| {r['start_s_median']*1000:.0f} | {ratio(r['start_s_median'], o_start)} "
            f"| {r['refreshes']:.0f} | {valid} |"
        )
    size = info["binary_bytes"]
    print(f"\nStripped release binary: {size} bytes ({size/1e6:.2f} MB, {size/MIB/MIB:.2f} MiB).\n")
    print("| target | measured | verdict |")
    print("|---|---|---|")
    checks = []
    if o_cpu is not None:
        checks.append(("CPU per refresh ≤ 0.3 ms (file mode)", f"{o_cpu:.3f} ms", o_cpu <= 0.3))
    if o_rss is not None:
        checks.append(("RSS ≤ 10 MiB (file mode)", f"{o_rss/MIB:.1f} MiB (max {ours['rss_kib_max']/MIB:.1f})", ours["rss_kib_max"] / MIB <= 10))
    k = res.get("ours-kube")
    if k:
        checks.append(("RSS ≤ 20 MiB (Secret watch + Secret sink)", f"{k['rss_kib_median']/MIB:.1f} MiB (max {k['rss_kib_max']/MIB:.1f})", k["rss_kib_max"] / MIB <= 20))
    checks.append(("stripped binary ≤ 10 MB", f"{size/1e6:.2f} MB", size <= 10_000_000))
    for name, measured, ok in checks:
        print(f"| {name} | {measured} | {'met' if ok else 'MISSED'} |")
    print()
    print("Versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))


if __name__ == "__main__":
    main()
