#!/usr/bin/env python3
"""Measures token refreshers against a real Label Studio on 127.0.0.1 (driven by bench/run.sh).

For each contender (a command that keeps an access token fresh and publishes it somewhere):
  * time to first token: spawn, poll every millisecond until a complete token is available to a
    consumer, then check that token against the real API (not timed); --starts times per run;
  * steady state: after the last start's first token and a warm-up, CPU time and refresh count over
    --window seconds -> CPU per refresh; resident memory sampled every 0.5 s -> median and max.
    For the SDK loop, whose process mostly polls (one token check a second, standing for the
    application's own calls), also the CPU of the refreshing iterations alone (its own split, see
    bench/alt_sdk.py): the polls are not refresh cost.
--runs runs, each visiting every contender in turn; report.py gives min / median / max over runs.

CPU is read from the process CPU clock of the contender's main process (clock_gettime on
MAKE_PROCESS_CPUCLOCK(pid): nanoseconds, all threads, including exited ones) plus the CPU time of its
waited-for children from /proc/PID/stat (clock ticks; only the shell loop has children). Refreshes
are counted by the contender itself (a counter file) or, for ours, from its own metrics.

Every process runs in its own session and is stopped by process group; every wait is bounded.
No network but 127.0.0.1.
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
import urllib.request

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid):
    """CPU seconds of process `pid` (all its threads), nanosecond precision."""
    return time.clock_gettime(((~pid) << 3) | 2)


def children_cpu(pid):
    """CPU seconds of the waited-for children of `pid` (cutime + cstime)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / CLK_TCK


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def group_rss_kib(pgid):
    """Summed VmRSS of every process in process group `pgid`."""
    total = 0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            total += rss_kib(int(d))
    return total


def http(url, headers=None, timeout=10):
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, ""
    except OSError:
        return 0, ""


def api_accepts(ls_url, token):
    return http(f"{ls_url}/api/current-user/whoami", {"Authorization": f"Bearer {token}"})[0] == 200


def metric(admin, name):
    code, text = http(f"{admin}/metrics", timeout=5)
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def complete_token(path):
    """The token in `path` if the file holds a complete JWT (a shell `>` redirect can be seen empty,
    a non-atomic write half-done): three parts and a whole HS256 signature (43 characters)."""
    try:
        with open(path) as f:
            s = f.read().strip()
    except OSError:
        return None
    parts = s.split(".")
    if len(parts) != 3 or len(s) < 100 or len(parts[2]) != 43:
        return None
    return s


class Proc:
    def __init__(self, argv, env, log):
        self.log = open(log, "ab")
        self.t0 = time.monotonic()
        self.p = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=self.log,
            start_new_session=True,
        )

    def stop(self):
        if self.p.poll() is None:
            try:
                os.killpg(self.p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait(timeout=5)
        self.log.close()


def wait_first_token(c, proc, limit=60.0):
    """Seconds from spawn until a consumer can read a complete token (polled every ms)."""
    while time.monotonic() - proc.t0 < limit:
        if c["ready"] == "file":
            tok = complete_token(c["token_path"])
            if tok:
                return time.monotonic() - proc.t0, tok
        else:  # readiness: ours with only a Secret sink
            if http(f"{c['admin']}/readyz", timeout=2)[0] == 200:
                return time.monotonic() - proc.t0, None
        if proc.p.poll() is not None:
            raise SystemExit(f"{c['name']}: exited with {proc.p.returncode} before the first token")
        time.sleep(0.001)
    raise SystemExit(f"{c['name']}: no token within {limit}s")


def refreshes(c):
    if c["count"] == "metrics":
        return metric(c["admin"], 'ls_token_refresher_refresh_total{result="success"}') or 0
    try:
        with open(c["count_path"]) as f:
            return int(f.read().strip() or 0)
    except (OSError, ValueError):
        return 0


def reset(c):
    for p in (c.get("token_path"), c.get("count_path")):
        if p and os.path.lexists(p):
            os.remove(p)
    d = c.get("clean_dir")
    if d and os.path.isdir(d):
        for n in os.listdir(d):
            full = os.path.join(d, n)
            if os.path.isdir(full) and not os.path.islink(full):
                shutil.rmtree(full)
            else:
                os.remove(full)


def sdk_stats(c):
    """The SDK loop's own split of its CPU into refreshing and polling iterations (bench/alt_sdk.py)."""
    if "token_path" not in c:  # ours with a Secret sink
        return None
    try:
        with open(os.path.join(os.path.dirname(c["token_path"]), "stats")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def measure_run(c, args, ls_url, logdir):
    """One run of contender `c`: --starts spawns timed to their first token (the last one goes on), a
    warm-up, then the steady window: CPU per refresh and RSS."""
    result = {"starts_s": [], "start_tokens_valid": 0}
    log = os.path.join(logdir, f"{c['slug']}.log")
    for i in range(args.starts):
        reset(c)
        proc = Proc(c["argv"], c["env"], log)
        try:
            secs, tok = wait_first_token(c, proc)
            result["starts_s"].append(secs)
            if tok is None or api_accepts(ls_url, tok):
                result["start_tokens_valid"] += 1
            if i < args.starts - 1:
                continue
            time.sleep(args.warmup)
            pid = proc.p.pid
            n0, c0, st0 = refreshes(c), proc_cpu(pid) + children_cpu(pid), sdk_stats(c)
            t0 = time.monotonic()
            samples = []
            while time.monotonic() - t0 < args.window:
                samples.append(group_rss_kib(pid))
                time.sleep(0.5)
            c1, n1, st1 = proc_cpu(pid) + children_cpu(pid), refreshes(c), sdk_stats(c)
            elapsed = time.monotonic() - t0
            final_ok = None
            if c["ready"] == "file":
                tok = complete_token(c["token_path"])
                final_ok = bool(tok) and api_accepts(ls_url, tok)
            result.update(
                {
                    "window_s": elapsed,
                    "refreshes": n1 - n0,
                    "cpu_s": c1 - c0,
                    "cpu_ms_per_refresh": (c1 - c0) * 1000 / (n1 - n0) if n1 > n0 else None,
                    "rss_kib_median": statistics.median(samples),
                    "rss_kib_max": max(samples),
                    "final_token_valid": final_ok,
                }
            )
            if st0 and st1 and st1["refreshes"] > st0["refreshes"]:
                # CPU of the iterations that refreshed only; the rest of the window is polls.
                k = st1["refreshes"] - st0["refreshes"]
                refresh_cpu = st1["refresh_cpu_s"] - st0["refresh_cpu_s"]
                result["cpu_ms_per_refresh_without_polls"] = refresh_cpu * 1000 / k
                result["poll_cpu_share"] = 1 - refresh_cpu / (c1 - c0) if c1 > c0 else None
        finally:
            proc.stop()
    print(
        f"  {c['name']}: first token {statistics.median(result['starts_s'])*1000:.0f} ms "
        f"(median of {args.starts}), {result['refreshes']:.0f} refreshes in {result['window_s']:.0f} s, "
        f"CPU/refresh {result['cpu_ms_per_refresh'] or float('nan'):.3f} ms, "
        f"RSS {result['rss_kib_median']/1024:.1f} MiB",
        file=sys.stderr,
        flush=True,
    )
    return result


def peak_rss_kib(argv, stdin_data=None, env=None):
    """Peak RSS of one run of `argv` (GNU time %M)."""
    out = subprocess.run(
        ["/usr/bin/time", "-f", "%M", *argv],
        input=stdin_data,
        capture_output=True,
        env=env,
        timeout=30,
    )
    return int(out.stderr.decode().strip().splitlines()[-1])


def main():
    # `timeout` sends SIGTERM: unwind so every contender is stopped (finally blocks) on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ap = argparse.ArgumentParser()
    ap.add_argument("--ls-url", required=True)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--python", required=True, help="python of the Label Studio venv (requests, SDK)")
    ap.add_argument("--work", required=True)
    ap.add_argument(
        "--token-base",
        default="/dev/shm" if os.path.isdir("/dev/shm") else "",
        help="where tokens are published (tmpfs, like the chart's in-memory emptyDir); default /dev/shm",
    )
    ap.add_argument("--runs", type=int, default=3, help="runs per contender (interleaved)")
    ap.add_argument("--window", type=float, default=30)
    ap.add_argument("--warmup", type=float, default=5)
    ap.add_argument("--starts", type=int, default=2, help="timed starts per run (the last one goes on)")
    ap.add_argument("--only", default="", help="comma-separated contender slugs")
    ap.add_argument("--kube-env", default="", help="file with KUBECONFIG=… and NAMESPACE=… (Secret mode)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    pat = os.environ["LS_PAT"]
    ls = args.ls_url
    here = os.path.dirname(os.path.abspath(__file__))
    base_env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": args.work}
    logdir = os.path.join(args.work, "logs")
    os.makedirs(logdir, exist_ok=True)

    def free_port():
        import socket

        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        p = s.getsockname()[1]
        s.close()
        return p

    # Ours: refresh at a quarter of the 4 s lifetime = about once a second, like the loops below.
    ours_flags = ["--refresh-fraction", "0.25", "--min-lead", "1s", "--jitter", "0s"]

    token_base = args.token_base or args.work
    token_dirs = []

    def token_dir(slug, on_disk=False):
        d = os.path.join(args.work if on_disk else token_base, f"lstr-bench-{os.getpid()}-{slug}")
        os.makedirs(d, exist_ok=True)
        token_dirs.append(d)
        return d

    def ours(slug, name, extra, kube=None, on_disk=False):
        d = token_dir(slug, on_disk)
        admin = f"http://127.0.0.1:{free_port()}"
        env = dict(base_env, LS_PAT=pat)
        argv = [args.bin, "run", "--url", ls, "--admin-addr", admin[len("http://"):], *ours_flags, *extra]
        c = {"slug": slug, "name": name, "count": "metrics", "admin": admin, "env": env}
        if kube:
            env.pop("LS_PAT")
            env["KUBECONFIG"] = kube["KUBECONFIG"]
            argv += ["--pat-secret", "ls-pat", "--target-secret", "ls-token", "--propagation-margin", "0s"]
            c.update({"ready": "readyz"})
        else:
            argv += ["--token-dir", d]
            c.update({"ready": "file", "token_path": os.path.join(d, "token"), "clean_dir": d})
        c["argv"] = argv
        return c

    def loop(slug, name, argv):
        d = token_dir(slug)
        env = dict(base_env, LS_PAT=pat, LS_URL=ls, OUT=d)
        return {
            "slug": slug,
            "name": name,
            "argv": argv,
            "env": env,
            "ready": "file",
            "token_path": os.path.join(d, "token"),
            "count": "file",
            "count_path": os.path.join(d, "count"),
        }

    contenders = [
        ours("ours", "ls-token-refresher (file sink, tmpfs)", []),
        ours("ours-novalidate", "ls-token-refresher --no-validate", ["--no-validate"]),
        ours("ours-disk", "ls-token-refresher, token dir on disk (ext4)", [], on_disk=True),
        loop("curl-jq", "curl + jq shell loop", ["bash", os.path.join(here, "alt_curl_jq.sh")]),
        loop("requests", "Python requests keep-alive loop", [args.python, os.path.join(here, "alt_requests.py")]),
        loop("sdk", "label-studio-sdk client (lazy refresh)", [args.python, os.path.join(here, "alt_sdk.py")]),
    ]
    if args.kube_env:
        kube = dict(l.split("=", 1) for l in open(args.kube_env).read().split())
        contenders.append(ours("ours-kube", "ls-token-refresher (Secret source + Secret sink)", [], kube))
    if args.only:
        keep = set(args.only.split(","))
        contenders = [c for c in contenders if c["slug"] in keep]

    # Runs interleave the contenders (A B C … A B C …), so drift on the shared machine hits all alike.
    results = {c["slug"]: {"name": c["name"], "runs": []} for c in contenders}
    try:
        for run in range(1, args.runs + 1):
            for c in contenders:
                print(f"run {run}/{args.runs}: {c['name']} …", file=sys.stderr, flush=True)
                results[c["slug"]]["runs"].append(measure_run(c, args, ls, logdir))
        finish(results, args, ls, pat)
    finally:
        for d in token_dirs:
            shutil.rmtree(d, ignore_errors=True)


def finish(results, args, ls, pat):

    if "curl-jq" in results:
        # The loop's shell sleeps between refreshes; during one, curl and jq run beside it.
        d = args.work
        with open(os.path.join(d, "body.json"), "w") as f:
            json.dump({"refresh": pat}, f)
        curl_argv = ["curl", "-sS", "-f", "-X", "POST", "-H", "Content-Type: application/json",
                     "-d", "@" + os.path.join(d, "body.json"), f"{ls}/api/token/refresh"]
        curl_peak = peak_rss_kib(curl_argv)
        body = subprocess.run(curl_argv, capture_output=True, timeout=30).stdout
        jq_peak = peak_rss_kib(["jq", "-r", ".access"], stdin_data=body)
        os.remove(os.path.join(d, "body.json"))
        r = results["curl-jq"]
        r["curl_peak_kib"], r["jq_peak_kib"] = curl_peak, jq_peak

    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
