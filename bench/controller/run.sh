#!/usr/bin/env bash
# Scale benchmark of `ls-token-refresher controller` (issue 16): N LabelStudioToken resources on a real
# kube-apiserver + etcd, against the fast Label Studio stand-in (tests/e2e/src/ls_standin.rs) and, for
# N=100, a real Label Studio 1.23.2. One run = tests/e2e/src/bin/bench-controller.rs (phases and
# figures in its header); this script repeats runs and summarises them (bench/controller/report.py).
#
#   bench/controller/run.sh                 # 100 ×3, 1,000 ×3, 10,000 ×1 (stand-in), 100 ×1 (real LS)
#   RUNS=1 SIZES="100 1000" bench/controller/run.sh
#
# Tokens live 300 s (Label Studio's default) with the controller's default timing, so a refresh
# happens ~170–180 s after issue and the 200 s steady window sees one refresh per token.
# Environment: CARGO_TARGET_DIR (required), LSTR_CACHE (provisioned components), RUNS, RUNS_10000,
# SIZES, REAL_LS (1: also N=100 against real Label Studio), QPS_10000/BURST_10000 (client rate limit
# of the 10,000 run; the defaults 50/100 cannot carry 10,000 tokens, see bench/RESULTS.md §5), OUT.
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${CARGO_TARGET_DIR:?set CARGO_TARGET_DIR}"
export LSTR_CACHE="${LSTR_CACHE:-/var/tmp/ls-token-refresher}"
RUNS="${RUNS:-3}"
RUNS_10000="${RUNS_10000:-1}"
SIZES="${SIZES:-100 1000 10000}"
REAL_LS="${REAL_LS:-1}"
QPS_10000="${QPS_10000:-150}"
BURST_10000="${BURST_10000:-300}"
OUT="${OUT:-$(mktemp -d /tmp/bench-controller.XXXXXX)}"
log() { printf '%s %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

log "cargo build --release (the binary under test) and the harness"
timeout 1500 cargo build --release --quiet -p ls-token-refresher
timeout 900 cargo build --quiet -p ls-token-refresher-e2e --bin bench-controller
export LSTR_REFRESHER_BIN="$CARGO_TARGET_DIR/release/ls-token-refresher"
BENCH="$CARGO_TARGET_DIR/debug/bench-controller"

one() { # name, then key=value arguments
  local name="$1"; shift
  log "run $name: $*"
  timeout 3600 "$BENCH" "$@" out="$OUT/$name.json" > "$OUT/$name.log" 2>&1 ||
    { log "run $name failed (log: $OUT/$name.log)"; tail -5 "$OUT/$name.log" >&2; }
}

for n in $SIZES; do
  case "$n" in
    10000) for i in $(seq 1 "$RUNS_10000"); do
             one "standin-$n-$i" tokens=$n namespaces=10 ttl=300 steady=200 restart_window=60 \
               qps="$QPS_10000" burst="$BURST_10000"; done ;;
    *)     for i in $(seq 1 "$RUNS"); do
             one "standin-$n-$i" tokens=$n namespaces=$(( n < 1000 ? 4 : 10 )) ttl=300 steady=200 \
               restart_window=60; done ;;
  esac
done
if [ "$REAL_LS" = 1 ]; then
  one "real-100-1" tokens=100 namespaces=4 ttl=300 steady=200 restart_window=60 real_ls=1
fi
log "results in $OUT"
python3 bench/controller/report.py "$OUT"/*.json
