#!/usr/bin/env bash
# Benchmark: ls-token-refresher against the alternatives users pick (a curl + jq shell loop, a Python
# requests loop, the official label-studio-sdk client), all against one real Label Studio 1.23.2 on
# 127.0.0.1, plus ls-token-refresher with a Secret source and a Secret sink on a real kube-apiserver.
# Prints a markdown table (CPU per refresh, RSS, time to first token: median (min–max) over runs,
# ratios to ours within each run; targets).
#
#   bench/run.sh                 # everything (~20 min warm; a cold machine first builds/provisions)
#   BENCH_KUBE=0 bench/run.sh    # without the Kubernetes row
#   BENCH_RUNS=3 BENCH_WINDOW=30 BENCH_STARTS=2 BENCH_TTL=4   # defaults: runs (interleaved), steady
#                                # window (s), timed starts per run, token TTL (s)
#   BENCH_IDLE_JSON=FILE         # add bench/idle.sh's production-cadence column (CPU per hour, 300 s tokens)
#   BENCH_KEEP=1                 # keep the work dir (logs, JSON results)
#
# Installs what it needs (jq, curl, GNU time via apt; Label Studio and the kube binaries through the
# repository's cached provisioning scripts). Every wait is bounded; everything it starts is stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
export LSTR_CACHE="${LSTR_CACHE:-/var/tmp/ls-token-refresher}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$LSTR_CACHE/target}"
TTL="${BENCH_TTL:-4}"
RUNS="${BENCH_RUNS:-3}"
WINDOW="${BENCH_WINDOW:-30}"
WARMUP="${BENCH_WARMUP:-5}"
STARTS="${BENCH_STARTS:-2}"
KUBE="${BENCH_KUBE:-1}"
WORK="$(mktemp -d /tmp/lstr-bench.XXXXXX)"
KUBE_PID=""

log() { echo "bench: $*" >&2; }

cleanup() {
  set +e
  ls_stop 2>/dev/null
  if [[ -n "$KUBE_PID" ]]; then
    touch "$WORK/kube.stop"
    for _ in $(seq 1 150); do kill -0 "$KUBE_PID" 2>/dev/null || break; sleep 0.2; done
    kill "$KUBE_PID" 2>/dev/null
    wait "$KUBE_PID" 2>/dev/null
  fi
  if [[ "${BENCH_KEEP:-0}" == 1 ]]; then log "work dir kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

# ---------------------------------------------------------------- tools
# shellcheck source=../tests/support/apt.sh
source tests/support/apt.sh
ensure_pkgs jq curl time

log "provisioning Label Studio 1.23.2 (cached under $LSTR_CACHE)"
timeout 1200 bash tests/support/ls/provision.sh >"$WORK/provision-ls.log" 2>&1 || {
  tail -n 30 "$WORK/provision-ls.log"; exit 1; }
PY="$LSTR_CACHE/ls-1.23.2/venv/bin/python"

log "cargo build --release"
timeout 1500 cargo build --release --quiet
BIN="$CARGO_TARGET_DIR/release/ls-token-refresher"
BIN_BYTES="$(stat -c %s "$BIN")"
file "$BIN" | grep -q ', stripped' || log "warning: $BIN is not stripped"

if [[ "$KUBE" == 1 ]]; then
  log "provisioning kube-apiserver + etcd (cached) and building its helper (bench-kube-env)"
  timeout 1800 bash tests/support/kube/provision.sh >"$WORK/provision-kube.log" 2>&1 || {
    tail -n 30 "$WORK/provision-kube.log"; exit 1; }
  timeout 1500 cargo build --quiet -p ls-token-refresher-e2e --bin bench-kube-env 2>"$WORK/build-tests.log" || {
    tail -n 30 "$WORK/build-tests.log"; exit 1; }
fi

# ---------------------------------------------------------------- Label Studio
# shellcheck source=../tests/support/ls/lib.sh
source tests/support/ls/lib.sh
log "starting Label Studio (access tokens live ${TTL} s)"
ls_start "$WORK/ls" "$TTL"
LS_PAT="$(ls_create_pat)"
export LS_PAT
LS_VERSION="$(curl -fsS "$LS_URL/api/version" | jq -r .release)"

# ---------------------------------------------------------------- measurements
log "measuring ($RUNS runs: ${STARTS} timed starts and a ${WINDOW} s window per contender and run)"
timeout $((RUNS * 600 + 300)) "$PY" bench/measure.py --ls-url "$LS_URL" --bin "$BIN" --python "$PY" --work "$WORK" \
  --runs "$RUNS" --window "$WINDOW" --warmup "$WARMUP" --starts "$STARTS" --out "$WORK/file.json"

results=("$WORK/file.json")
if [[ "$KUBE" == 1 ]]; then
  log "starting kube-apiserver + etcd with the PAT Secret (tests/e2e/src/bin/bench-kube-env.rs)"
  LSTR_BENCH_PAT="$LS_PAT" LSTR_BENCH_KUBE_ENV="$WORK/kube.env" LSTR_BENCH_KUBE_STOP="$WORK/kube.stop" \
    timeout 900 "$CARGO_TARGET_DIR/debug/bench-kube-env" >"$WORK/kube-helper.log" 2>&1 &
  KUBE_PID=$!
  for _ in $(seq 1 600); do
    [[ -s "$WORK/kube.env" ]] && break
    kill -0 "$KUBE_PID" 2>/dev/null || { tail -n 40 "$WORK/kube-helper.log"; exit 1; }
    sleep 0.5
  done
  [[ -s "$WORK/kube.env" ]] || { log "kube helper did not come up"; tail -n 40 "$WORK/kube-helper.log"; exit 1; }
  timeout $((RUNS * 120 + 300)) "$PY" bench/measure.py --ls-url "$LS_URL" --bin "$BIN" --python "$PY" \
    --work "$WORK" --runs "$RUNS" --window "$WINDOW" --warmup "$WARMUP" --starts "$STARTS" --only ours-kube \
    --kube-env "$WORK/kube.env" --out "$WORK/kube.json"
  results+=("$WORK/kube.json")
  touch "$WORK/kube.stop"
  wait "$KUBE_PID" || true
  grep '^bench:' "$WORK/kube-helper.log" >&2 || true
  KUBE_PID=""
fi

# ---------------------------------------------------------------- report
"$PY" - "$WORK/info.json" <<EOF
import json, os, platform, subprocess, sys, datetime
def out(*a):
    try:
        return subprocess.run(a, capture_output=True, text=True, timeout=30).stdout.strip()
    except Exception:
        return "?"
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
mem = next((l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal")), "0")
import requests, label_studio_sdk, importlib.metadata as md
info = {
    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    "cpu": cpu, "cores": os.cpu_count(), "mem": f"{int(mem)/1024/1024:.0f} GiB", "kernel": platform.release(),
    "ls_version": "$LS_VERSION", "ttl": $TTL, "window": $WINDOW, "warmup": $WARMUP, "starts": $STARTS,
    "runs": $RUNS,
    "binary_bytes": $BIN_BYTES,
    "versions": {
        "ls-token-refresher": out("$BIN", "--version").split()[-1],
        "rustc": out("rustc", "--version").split()[1],
        "curl": out("curl", "--version").split()[1],
        "jq": out("jq", "--version"),
        "bash": out("bash", "-c", 'echo \$BASH_VERSION'),
        "python": platform.python_version(),
        "requests": requests.__version__,
        "label-studio-sdk": md.version("label-studio-sdk"),
        "httpx": md.version("httpx"),
    },
}
json.dump(info, open(sys.argv[1], "w"), indent=2)
EOF
echo
idle=()
[[ -n "${BENCH_IDLE_JSON:-}" ]] && idle=(--idle "$BENCH_IDLE_JSON")
"$PY" bench/report.py "$WORK/info.json" "${results[@]}" "${idle[@]}"
