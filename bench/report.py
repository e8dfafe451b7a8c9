#!/usr/bin/env python3
"""Turns bench/measure.py results into the markdown tables bench/run.sh prints (and RESULTS.md quotes):
median (min–max) over runs, and ratios to ours taken run by run (peer ÷ ours in the same run).
Usage: report.py INFO.json RESULTS.json [RESULTS.json …] [--idle IDLE.json]
  --idle: bench/idle.py's output (300 s tokens) adds the production-cadence column, CPU per hour."""

import json
import statistics
import sys

MIB = 1024.0
ORDER = ["ours", "ours-novalidate", "ours-disk", "ours-kube", "curl-jq", "requests", "sdk"]
# bench/idle.py's contender for each row here
IDLE_SLUG = {"ours": "after", "curl-jq": "curl-jq", "requests": "requests", "sdk": "sdk"}


def mmm(xs, digits=2, unit=""):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "—"
    med = statistics.median(xs)
    if min(xs) == max(xs):
        return f"{med:.{digits}f}{unit}"
    return f"{med:.{digits}f}{unit} ({min(xs):.{digits}f}–{max(xs):.{digits}f})"


def per_run_ratio(rows, ours, key):
    return [r[key] / o[key] for r, o in zip(rows, ours) if r.get(key) and o.get(key)]


def cost(r):
    """CPU per refresh; for the SDK loop without its idle polls (its own split)."""
    return r.get("cpu_ms_per_refresh_without_polls") or r.get("cpu_ms_per_refresh")


def main():
    args = sys.argv[1:]
    idle = None
    if "--idle" in args:
        i = args.index("--idle")
        idle = json.load(open(args[i + 1]))
        del args[i : i + 2]
    info = json.load(open(args[0]))
    res = {}
    for p in args[1:]:
        res.update(json.load(open(p)))
    ours = res.get("ours", {}).get("runs", [])
    for rs in res.values():
        for r in rs["runs"]:
            r["cost"] = cost(r)
            r["start_ms"] = statistics.median(r["starts_s"]) * 1000
    idle_rows = {}
    if idle:
        sys.path.insert(0, __file__.rsplit("/", 1)[0])
        from idle import derive

        idle_rows = derive(idle)

    print(f"## Results ({info['date']})\n")
    print(
        f"Machine: {info['cpu']} ×{info['cores']}, {info['mem']}, Linux {info['kernel']}. "
        f"Label Studio {info['ls_version']} on 127.0.0.1 (access-token lifetime {info['ttl']} s); "
        f"{info['runs']} runs, each visiting every contender in turn: {info['starts']} timed starts, then a "
        f"{info['window']} s steady window after a {info['warmup']} s warm-up. Median (min–max) over runs; "
        f"ratios are taken within each run (peer ÷ ours), then summarised.\n"
    )
    head = (
        "| contender | CPU per refresh (ms) | vs ours | RSS median (MiB) | vs ours | first token (ms) "
        "| vs ours | refreshes per window | tokens valid |"
    )
    sep = "|---|---:|---:|---:|---:|---:|---:|---:|---|"
    if idle_rows:
        head += f" CPU per hour at {idle['ttl']:.0f} s tokens (ms) | vs ours |"
        sep += "---:|---:|"
    print(head)
    print(sep)
    for slug in ORDER:
        if slug not in res:
            continue
        rs = res[slug]["runs"]
        n_starts = sum(len(r["starts_s"]) for r in rs)
        valid = f"{sum(r['start_tokens_valid'] for r in rs)}/{n_starts} starts"
        finals = [r["final_token_valid"] for r in rs if r.get("final_token_valid") is not None]
        if finals:
            valid += f", last of {len(finals)} windows ok" if all(finals) else ", A LAST TOKEN WAS REJECTED"
        rss = mmm([r["rss_kib_median"] / MIB for r in rs], 1)
        if slug == "curl-jq" and "curl_peak_kib" in res[slug]:
            c = res[slug]
            rss += f" idle; +curl {c['curl_peak_kib']/MIB:.1f} +jq {c['jq_peak_kib']/MIB:.1f} while refreshing"
        name = res[slug]["name"] + (" ¹" if slug == "sdk" else "")
        line = (
            f"| {name} | {mmm([r['cost'] for r in rs], 2)} | {mmm(per_run_ratio(rs, ours, 'cost'), 1, '×')} "
            f"| {rss} | {mmm(per_run_ratio(rs, ours, 'rss_kib_median'), 1, '×')} "
            f"| {mmm([r['start_ms'] for r in rs], 0)} | {mmm(per_run_ratio(rs, ours, 'start_ms'), 1, '×')} "
            f"| {mmm([r['refreshes'] for r in rs], 0)} | {valid} |"
        )
        if idle_rows:
            i = idle_rows.get(IDLE_SLUG.get(slug))
            o = idle_rows.get("after")
            if i:
                vs = [a.get("cpu_ms_h") / b.get("cpu_ms_h") for a, b in zip(i["runs"], o["runs"])
                      if a.get("cpu_ms_h") and b.get("cpu_ms_h")]
                line += f" {mmm([r.get('cpu_ms_h') for r in i['runs']], 0)} | {mmm(vs, 1, '×')} |"
            else:
                line += " — | — |"
        print(line)
    if "sdk" in res:
        rs = res["sdk"]["runs"]
        print(
            f"\n¹ The SDK row counts only the iterations that refreshed (the loop's own CPU split, "
            f"bench/alt_sdk.py). All of its process CPU ÷ refreshes is "
            f"{mmm([r['cpu_ms_per_refresh'] for r in rs], 2)} ms: its once-a-second token checks (standing for "
            f"an application's own API calls) are {mmm([100 * r['poll_cpu_share'] for r in rs if r.get('poll_cpu_share') is not None], 0)} % "
            f"of its CPU and are not charged as refresh cost here."
        )
    if idle_rows:
        b = idle_rows.get("before")
        if b:
            print(
                f"\nProduction cadence ({idle['ttl']:.0f} s tokens, bench/idle.sh): the build before the restructure "
                f"(f743eb2) used {mmm([r.get('cpu_ms_h') for r in b['runs']], 0)} ms of CPU per hour."
            )
    size = info["binary_bytes"]
    print(f"\nStripped release binary: {size} bytes ({size/1e6:.2f} MB, {size/MIB/MIB:.2f} MiB).\n")
    print("| target | measured (median over runs) | verdict |")
    print("|---|---|---|")
    checks = []
    o_cost = statistics.median([r["cost"] for r in ours if r["cost"]]) if ours else None
    if o_cost is not None:
        checks.append(("CPU per refresh ≤ 0.3 ms (file mode)", f"{o_cost:.2f} ms", o_cost <= 0.3))
        rss_max = max(r["rss_kib_max"] for r in ours) / MIB
        checks.append(("RSS ≤ 10 MiB (file mode)", f"max {rss_max:.1f} MiB", rss_max <= 10))
    k = res.get("ours-kube")
    if k:
        rss_max = max(r["rss_kib_max"] for r in k["runs"]) / MIB
        checks.append(("RSS ≤ 20 MiB (Secret watch + Secret sink)", f"max {rss_max:.1f} MiB", rss_max <= 20))
    checks.append(("stripped binary ≤ 10 MB", f"{size/1e6:.2f} MB", size <= 10_000_000))
    for name, measured, ok in checks:
        print(f"| {name} | {measured} | {'met' if ok else 'MISSED'} |")
    print()
    print("Versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))


if __name__ == "__main__":
    main()
