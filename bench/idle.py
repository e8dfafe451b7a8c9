#!/usr/bin/env python3
"""Idle cost at the real cadence (issue 8), driven by bench/idle.sh: context switches and CPU of each
contender between refreshes, the CPU of a refresh itself, and the CPU per hour that follows.

Label Studio hands out access tokens living --ttl seconds (300 = its stock lifetime). Per run, every
contender is started at once against it with the same PAT:
  * before / after: ls-token-refresher `run --pat-file F --token-dir D` (default schedule: refresh at
    0.66 of the lifetime minus up to 10 s jitter), the build before the restructure and this one;
  * curl-jq / requests: bench/alt_curl_jq.sh / alt_requests.py, refreshing every --loop-interval
    seconds (default 0.66 x ttl, ours' cadence) and sleeping in between;
  * sdk: bench/alt_sdk.py, the label-studio-sdk client asked for a token every --sdk-poll seconds
    (standing for an application's own API calls; the SDK refreshes lazily, after expiry).
After every first token and a warm-up (startup threads gone), each contender is watched for --window
seconds:
  * context switches: `perf stat -I 1000 -e context-switches -p PID`, per second, over all its threads
    and child processes, including those that start and exit inside the window (perf's inherited
    counters are folded into the parent's when a thread or child exits);
  * CPU: the process CPU clock (clock_gettime on the PID's CPU clock: all threads, exited ones
    included) plus its reaped children's (/proc/PID/stat cutime + cstime: the shell loop's curl and
    jq), read by the harness every 0.25 s. (perf's cpu-clock is recorded too, as a cross-check: it
    reads less than the process clock, the more so the more a process wakes up.)
The harness meanwhile reads each contender's token file every 0.25 s and notes when a new token
appears. It never talks to the contenders (a metrics scrape would be a wake-up), so it causes none
of their context switches.

Each sampling interval (1 s for context switches, 0.25 s for CPU) that overlaps [refresh - PRE,
refresh + POST] counts as refresh time, every other one as idle. Per run and contender:
  idle rate      = counts in idle intervals / their length (context switches per minute, CPU per minute);
  refresh cost   = (counts in refresh intervals - idle rate x their length) / refreshes seen;
  refreshes/hour = 3600 / the median gap between consecutive refreshes over all runs (the schedule's);
  CPU per hour   = refreshes/hour x refresh cost + idle CPU rate x 3600 s;
  ratio          = CPU per hour / (refreshes/hour x refresh cost): 1.0 = no idle cost at all.
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time

from measure import Proc, children_cpu, complete_token, proc_cpu

PRE = 3.0  # s before a new token appears that belong to its refresh (request, validation)
# s after it: the write's blocking-pool thread lives 10 s after its last job (tokio's default
# keep-alive) and its exit is part of the refresh; +5 s margin.
POST = 15.0
# s after a wall-clock step that belong to the step: ours then checks its token with one request, at
# once or, if it checked less than 10 s before (its rate limit), up to 10 s later; +1 s margin.
STEP_POST = 11.0
ORDER = ["before", "after", "curl-jq", "requests", "sdk"]
NAMES = {
    "before": "ls-token-refresher before (f743eb2)",
    "after": "ls-token-refresher after (this tree)",
    "curl-jq": "curl + jq shell loop",
    "requests": "Python requests loop",
    "sdk": "label-studio-sdk, app polls 1/s",
}


def perf_intervals(path):
    """[(t_end_s, context_switches, cpu_ms)] from `perf stat -I -x,` output."""
    rows = {}
    with open(path) as f:
        for line in f:
            parts = line.strip().split(",")
            if len(parts) < 4 or line.startswith("#"):
                continue
            try:
                t = float(parts[0])
            except ValueError:
                continue
            value = 0.0 if parts[1].startswith("<not counted>") else float(parts[1])
            if parts[1].startswith("<not supported>"):
                raise SystemExit(f"perf: {parts[3]} not supported here")
            rows.setdefault(t, {})[parts[3]] = value
    return [(t, v.get("context-switches", 0.0), v.get("cpu-clock", 0.0)) for t, v in sorted(rows.items())]


def split(spans, refreshes, steps, window_end):
    """{idle_s, idle, ref_s, ref, step_s, step}: sums of `spans` [(start, end, value)] (absolute
    monotonic times) by whether a span overlaps [refresh - PRE, refresh + POST], else
    [step - 1, step + STEP_POST] of a wall-clock step, else neither (idle)."""
    out = {"idle_s": 0.0, "idle": 0.0, "ref_s": 0.0, "ref": 0.0, "step_s": 0.0, "step": 0.0}
    for a, b, value in spans:
        b = min(b, window_end)
        if b <= a:
            continue
        if any(a < r + POST and b > r - PRE for r in refreshes):
            k = "ref"
        elif any(a < st + STEP_POST and b > st - 1 for st in steps):
            k = "step"
        else:
            k = "idle"
        out[k + "_s"] += b - a
        out[k] += value
    return out


def split_run(s):
    """The idle / refresh / clock-step sums of one contender's raw series in one run."""
    end = s["window_s"]
    deltas, prev = [], 0.0
    for t, v in s["cpu"]:
        deltas.append((t, v - prev))
        prev = v
    cpu = split(spans_of(0.0, deltas), s["refreshes"], s["steps"], end)
    ctx = split(spans_of(0.0, [(t, n) for t, n, _ in s["perf"]]), s["refreshes"], s["steps"], end)
    return {
        "idle_s": cpu["idle_s"], "idle_cpu_ms": cpu["idle"], "ref_s": cpu["ref_s"], "ref_cpu_ms": cpu["ref"],
        "step_s": cpu["step_s"], "step_cpu_ms": cpu["step"],
        "cs_idle_s": ctx["idle_s"], "idle_cs": ctx["idle"], "cs_ref_s": ctx["ref_s"], "ref_cs": ctx["ref"],
        "cs_step_s": ctx["step_s"], "step_cs": ctx["step"],
        "perf_cpu_ms": sum(i[2] for i in s["perf"]), "clock_cpu_ms": s["cpu"][-1][1] if s["cpu"] else 0.0,
    }


class ClockSteps:
    """Notices steps of the wall clock (clock_settime by anyone on the machine: this project's own
    unit test sets the clock to its current value) the way ls-token-refresher does, with a
    CLOCK_REALTIME timerfd armed with TFD_TIMER_CANCEL_ON_SET; `poll()` returns True once per step."""

    CLOCK_REALTIME, TFD_NONBLOCK, TFD_CLOEXEC = 0, 0o4000, 0o2000000
    TFD_TIMER_ABSTIME, TFD_TIMER_CANCEL_ON_SET = 1, 2

    def __init__(self):
        import ctypes

        self.ct = ctypes
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.timerfd_create(self.CLOCK_REALTIME, self.TFD_NONBLOCK | self.TFD_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create")
        self.arm()

    def arm(self):
        ts = (self.ct.c_long * 4)(0, 0, int(time.time()) + 10 * 365 * 86400, 0)  # it_interval, it_value
        flags = self.TFD_TIMER_ABSTIME | self.TFD_TIMER_CANCEL_ON_SET
        if self.libc.timerfd_settime(self.fd, flags, ts, None) != 0:
            raise OSError(self.ct.get_errno(), "timerfd_settime")

    def poll(self):
        try:
            os.read(self.fd, 8)
        except BlockingIOError:
            return False
        except OSError as e:  # ECANCELED: the clock was set
            if e.errno != 125:
                raise
            self.arm()
            return True
        return False


def spans_of(t0, points):
    """[(t, v)] cumulative or per-interval points -> [(start, end, v)] spans starting at t0."""
    out, prev = [], t0
    for t, v in points:
        out.append((prev, t, v))
        prev = t
    return out


def main():
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ap = argparse.ArgumentParser()
    ap.add_argument("--ls-url", required=True)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--before-bin", required=True)
    ap.add_argument("--python", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--pat-file", required=True)
    ap.add_argument("--ttl", type=float, default=300)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--window", type=float, default=600)
    ap.add_argument("--warmup", type=float, default=20)
    ap.add_argument("--loop-interval", type=float, default=0)
    ap.add_argument("--sdk-poll", type=float, default=1)
    ap.add_argument("--only", default="")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    loop_interval = args.loop_interval or round(0.66 * args.ttl)
    pat = open(args.pat_file).read().strip()
    here = os.path.dirname(os.path.abspath(__file__))
    base_env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": args.work}
    logdir = os.path.join(args.work, "logs")
    os.makedirs(logdir, exist_ok=True)
    base = "/dev/shm" if os.path.isdir("/dev/shm") else args.work

    def contenders():
        cs = []
        for slug in ORDER:
            d = os.path.join(base, f"lstr-idle-{os.getpid()}-{slug}")
            shutil.rmtree(d, ignore_errors=True)
            os.makedirs(d)
            c = {"slug": slug, "dir": d, "token_path": os.path.join(d, "token")}
            if slug in ("before", "after"):
                binary = args.before_bin if slug == "before" else args.bin
                # The admin port is bound but never asked during the window (a scrape is a wake-up).
                c["argv"] = [binary, "run", "--url", args.ls_url, "--pat-file", args.pat_file,
                             "--token-dir", d, "--admin-addr", "127.0.0.1:0"]
                c["env"] = dict(base_env)
            elif slug == "curl-jq":
                c["argv"] = ["bash", os.path.join(here, "alt_curl_jq.sh")]
                c["env"] = dict(base_env, LS_PAT=pat, LS_URL=args.ls_url, OUT=d, INTERVAL=str(loop_interval))
            elif slug == "requests":
                c["argv"] = [args.python, os.path.join(here, "alt_requests.py")]
                c["env"] = dict(base_env, LS_PAT=pat, LS_URL=args.ls_url, OUT=d, INTERVAL=str(loop_interval))
            else:
                c["argv"] = [args.python, os.path.join(here, "alt_sdk.py")]
                c["env"] = dict(base_env, LS_PAT=pat, LS_URL=args.ls_url, OUT=d, POLL=str(args.sdk_poll))
            if not args.only or slug in args.only.split(","):
                cs.append(c)
        return cs

    doc = {"ttl": args.ttl, "window": args.window, "warmup": args.warmup, "loop_interval": loop_interval,
           "sdk_poll": args.sdk_poll, "pre": PRE, "post": POST}
    runs = []
    for run in range(1, args.runs + 1):
        cs = contenders()
        procs, perfs = {}, {}
        try:
            for c in cs:
                procs[c["slug"]] = Proc(c["argv"], c["env"], os.path.join(logdir, f"{c['slug']}.log"))
            deadline = time.monotonic() + 90
            last = {}
            while len(last) < len(cs):
                for c in cs:
                    if c["slug"] in last:
                        continue
                    p = procs[c["slug"]]
                    if p.p.poll() is not None:
                        raise SystemExit(f"{c['slug']}: exited with {p.p.returncode} (log {logdir})")
                    tok = complete_token(c["token_path"])
                    if tok:
                        last[c["slug"]] = tok
                if time.monotonic() > deadline:
                    raise SystemExit("no first token from: " + ", ".join(c["slug"] for c in cs if c["slug"] not in last))
                time.sleep(0.05)
            print(f"run {run}/{args.runs}: first tokens in; warm-up {args.warmup:.0f} s", file=sys.stderr, flush=True)
            time.sleep(args.warmup)
            # Tokens that changed during the warm-up are the new baseline.
            last = {c["slug"]: complete_token(c["token_path"]) for c in cs}
            starts = {}
            for c in cs:
                pid = procs[c["slug"]].p.pid
                out = os.path.join(args.work, f"perf-{run}-{c['slug']}.csv")
                starts[c["slug"]] = (time.monotonic(), proc_cpu(pid) + children_cpu(pid))
                perfs[c["slug"]] = (subprocess.Popen(
                    ["perf", "stat", "-I", "1000", "-x", ",", "-e", "context-switches,cpu-clock",
                     "-p", str(pid), "-o", out],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE), out)
            t_begin = max(s[0] for s in starts.values())
            seen = {c["slug"]: [] for c in cs}
            steps, stepwatch = [], ClockSteps()
            # CPU comes from the process CPU clock (+ reaped children), read from here every 0.25 s.
            cpu_series = {c["slug"]: [] for c in cs}
            print(f"run {run}/{args.runs}: window {args.window:.0f} s", file=sys.stderr, flush=True)
            while time.monotonic() - t_begin < args.window:
                if stepwatch.poll():
                    steps.append(time.monotonic())
                for c in cs:
                    pid = procs[c["slug"]].p.pid
                    cpu_series[c["slug"]].append((time.monotonic(), proc_cpu(pid) + children_cpu(pid)))
                    tok = complete_token(c["token_path"])
                    if tok and tok != last[c["slug"]]:
                        seen[c["slug"]].append(time.monotonic())
                        last[c["slug"]] = tok
                    if procs[c["slug"]].p.poll() is not None:
                        raise SystemExit(f"{c['slug']}: exited during the window (log {logdir})")
                time.sleep(0.25)
            t_end = time.monotonic()
            ends = {}
            for c in cs:
                pid = procs[c["slug"]].p.pid
                ends[c["slug"]] = (time.monotonic(), proc_cpu(pid) + children_cpu(pid))
                perfs[c["slug"]][0].send_signal(signal.SIGINT)
            for slug, (p, _) in perfs.items():
                _, err = p.communicate(timeout=30)
                if p.returncode not in (0, 130, -2):
                    raise SystemExit(f"perf for {slug} failed: {err.decode()[-500:]}")
            result = {"run": run}
            for c in cs:
                slug = c["slug"]
                t0, cpu0 = starts[slug]
                # Raw series, relative to the window's start; derive() splits them.
                s = {
                    "perf": [(t, n, cpu) for t, n, cpu in perf_intervals(perfs[slug][1])],
                    "cpu": [(t - t0, (v - cpu0) * 1000) for t, v in cpu_series[slug] + [ends[slug]]],
                    "refreshes": [r - t0 for r in seen[slug]],
                    "steps": [st - t0 for st in steps],
                    "window_s": t_end - t0,
                }
                if slug == "sdk":
                    s["sdk_stats"] = json.load(open(os.path.join(c["dir"], "stats")))
                result[slug] = s
                f = split_run(s)
                print(f"  {slug}: {len(seen[slug])} refreshes, idle {f['idle_s']:.0f} s: "
                      f"{f['idle_cs'] / max(f['cs_idle_s'], 1e-9) * 60:.1f} cs/min, "
                      f"{f['idle_cpu_ms'] / max(f['idle_s'], 1e-9) * 60:.3f} ms CPU/min; "
                      f"perf CPU {f['perf_cpu_ms']:.1f} ms vs CPU clock {f['clock_cpu_ms']:.1f} ms",
                      file=sys.stderr, flush=True)
            if steps:
                print(f"  wall clock stepped {len(steps)} time(s) during the window (by something else on the machine)",
                      file=sys.stderr, flush=True)
            runs.append(result)
            # After every run, so that a late failure keeps what was measured.
            with open(args.out, "w") as f:
                json.dump(dict(doc, runs=runs), f)
        finally:
            for p, _ in perfs.values():
                if p.poll() is None:
                    p.kill()
                    p.wait()
            for p in procs.values():
                p.stop()
            for c in cs:
                shutil.rmtree(c["dir"], ignore_errors=True)
    report(dict(doc, runs=runs))


def mmm(xs, digits=1):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "—"
    med = statistics.median(xs)
    return f"{med:.{digits}f} ({min(xs):.{digits}f}–{max(xs):.{digits}f})"


def nominal_gap(doc, slug):
    """Seconds between refreshes by construction, for when a window saw fewer than two."""
    ttl = doc["ttl"]
    if slug in ("before", "after"):  # 0.66 of the lifetime but >= 30 s before exp, minus mean jitter
        return min(0.66 * ttl, ttl - 30) - min(10, 0.1 * ttl) / 2
    if slug == "sdk":  # after expiry, at the next poll
        return ttl + doc["sdk_poll"] / 2
    return doc["loop_interval"]


def derive(doc):
    """Per contender: per-run figures and the pooled cadence."""
    out = {}
    for slug in ORDER:
        rs = [r[slug] for r in doc["runs"] if slug in r]
        if not rs:
            continue
        gaps = [b - a for r in rs for a, b in zip(r["refreshes"], r["refreshes"][1:])]
        gap = statistics.median(gaps) if gaps else nominal_gap(doc, slug)
        per_hour = 3600 / gap
        per_run = []
        for raw in rs:
            r = dict(raw, **split_run(raw))
            n, k = len(r["refreshes"]), len(r["steps"])
            cs_idle = r["idle_cs"] / r["cs_idle_s"]  # per second
            cpu_idle = r["idle_cpu_ms"] / r["idle_s"]  # ms of CPU per second idle
            cost = (r["ref_cpu_ms"] - cpu_idle * r["ref_s"]) / n if n else None
            row = {
                "n": n, "steps": k,
                "idle_cs_min": cs_idle * 60,
                "idle_cs_min_with_steps": (r["idle_cs"] + r["step_cs"]) / (r["cs_idle_s"] + r["cs_step_s"]) * 60,
                "idle_cpu_ms_min": cpu_idle * 60,
                "cost_ms": cost,
                "cs_per_refresh": (r["ref_cs"] - cs_idle * r["cs_ref_s"]) / n if n else None,
                "cs_per_step": (r["step_cs"] - cs_idle * r["cs_step_s"]) / k if k else None,
                "cpu_ms_per_step": (r["step_cpu_ms"] - cpu_idle * r["step_s"]) / k if k else None,
                "perf_vs_clock": r["perf_cpu_ms"] / r["clock_cpu_ms"] if r["clock_cpu_ms"] else None,
            }
            if cost is not None:
                row["refresh_ms_h"] = per_hour * cost
                row["idle_ms_h"] = cpu_idle * 3600
                row["cpu_ms_h"] = row["refresh_ms_h"] + row["idle_ms_h"]
                row["ratio"] = row["cpu_ms_h"] / row["refresh_ms_h"] if row["refresh_ms_h"] > 0 else None
            if slug == "sdk":
                st = r["sdk_stats"]
                row["sdk_poll_ms"] = st["poll_cpu_s"] * 1000 / st["polls"] if st["polls"] else None
                row["sdk_refresh_ms_inproc"] = st["refresh_cpu_s"] * 1000 / st["refreshes"]
            per_run.append(row)
        out[slug] = {"per_hour": per_hour, "gap": gap, "observed": bool(gaps), "runs": per_run}
    return out


def report(doc):
    d = derive(doc)
    nruns = len(doc["runs"])
    steps = [len(r[next(iter(d))]["steps"]) for r in doc["runs"]] if d else []
    print(f"Access tokens live {doc['ttl']:.0f} s; {nruns} runs, each a {doc['window']:.0f} s window after a "
          f"{doc['warmup']:.0f} s warm-up, all contenders side by side; median (min–max) over runs. Refresh time = "
          f"sampling intervals overlapping [new token − {doc['pre']:.0f} s, + {doc['post']:.0f} s]; "
          f"wall-clock steps by something else on the machine: {sum(steps)} in all windows ({steps} per run), "
          f"their seconds [−1 s, +{STEP_POST:.0f} s] set apart; the rest is idle.\n")
    print("| contender | refreshes seen | refresh every (s) | idle context switches / min "
          "| … with clock-step responses | idle CPU (ms/min) | CPU per refresh (ms) | CPU per hour (ms) "
          "| of which idle | CPU/h ÷ refreshes' own | CPU/h vs after |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    after = d.get("after")
    for slug, v in d.items():
        rs = v["runs"]
        vs = "1.0×" if slug == "after" else "—"
        if after and slug != "after":
            pairs = [r["cpu_ms_h"] / a["cpu_ms_h"] for r, a in zip(rs, after["runs"])
                     if r.get("cpu_ms_h") and a.get("cpu_ms_h")]
            vs = mmm(pairs, 1) + "×" if pairs else "—"
        gap = f"{v['gap']:.0f}" + ("" if v["observed"] else " (nominal)")
        print(f"| {NAMES[slug]} | {sum(r['n'] for r in rs)} | {gap} "
              f"| {mmm([r['idle_cs_min'] for r in rs], 1)} | {mmm([r['idle_cs_min_with_steps'] for r in rs], 1)} "
              f"| {mmm([r['idle_cpu_ms_min'] for r in rs], 3)} "
              f"| {mmm([r['cost_ms'] for r in rs], 2)} | {mmm([r.get('cpu_ms_h') for r in rs], 0)} "
              f"| {mmm([r.get('idle_ms_h') for r in rs], 0)} | {mmm([r.get('ratio') for r in rs], 2)} | {vs} |")
    print()
    for slug, v in d.items():
        rs = v["runs"]
        extra = ""
        if any(r["steps"] for r in rs):
            extra += (f"; per clock step {mmm([r['cs_per_step'] for r in rs], 0)} context switches, "
                      f"{mmm([r['cpu_ms_per_step'] for r in rs], 2)} ms CPU")
        if slug == "sdk":
            extra += (f"; in-process split: a poll {mmm([r['sdk_poll_ms'] for r in rs], 3)} ms, a refresh "
                      f"{mmm([r['sdk_refresh_ms_inproc'] for r in rs], 2)} ms")
        print(f"- {slug}: context switches per refresh {mmm([r['cs_per_refresh'] for r in rs], 0)}; "
              f"perf's cpu-clock ÷ the process CPU clock over the window "
              f"{mmm([r['perf_vs_clock'] for r in rs], 2)}{extra}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--report":
        report(json.load(open(sys.argv[2])))
    else:
        main()
