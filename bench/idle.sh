#!/usr/bin/env bash
# Idle cost at the real cadence (issue 8): context switches and CPU between refreshes, CPU per refresh
# and per hour with Label Studio's stock 300 s access tokens and `--pat-file`, for ls-token-refresher
# before the restructure (f743eb2) and now, and for the peers (curl + jq loop, Python requests loop,
# label-studio-sdk). Method and formulas: bench/idle.py's docstring; results: bench/RESULTS.md.
#
#   bench/idle.sh                        # 3 runs x 600 s window (~33 min warm)
#   BENCH_RUNS=5 BENCH_WINDOW=900 bench/idle.sh
#   BENCH_BEFORE_BIN=/path/to/old/binary # skip building f743eb2
#   BENCH_KEEP=1                         # keep the work dir (per-second perf counts, logs, JSON)
#
# Needs perf (linux-perf; software events are enough: context-switches, cpu-clock). The "before" binary is
# built once from `git archive f743eb2` (release, its own target dir) and cached under $LSTR_CACHE.
set -euo pipefail
cd "$(dirname "$0")/.."
export LSTR_CACHE="${LSTR_CACHE:-/var/tmp/ls-token-refresher}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$LSTR_CACHE/target}"
BEFORE_REV=f743eb2
TTL="${BENCH_TTL:-300}"
RUNS="${BENCH_RUNS:-3}"
WINDOW="${BENCH_WINDOW:-600}"
WORK="$(mktemp -d /tmp/lstr-idle.XXXXXX)"
log() { echo "idle: $*" >&2; }
cleanup() {
  set +e
  ls_stop 2>/dev/null
  if [[ "${BENCH_KEEP:-0}" == 1 ]]; then log "work dir kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

command -v perf >/dev/null || { log "needs perf (apt-get install linux-perf)"; exit 1; }
perf stat -e context-switches true >/dev/null 2>&1 || { log "perf cannot count here (perf_event_paranoid?)"; exit 1; }

timeout 1200 bash tests/support/ls/provision.sh >"$WORK/provision-ls.log" 2>&1 || {
  tail -n 30 "$WORK/provision-ls.log"; exit 1; }
PY="$LSTR_CACHE/ls-1.23.2/venv/bin/python"

log "cargo build --release"
timeout 1500 nice cargo build --release --quiet
BIN="$CARGO_TARGET_DIR/release/ls-token-refresher"

BEFORE_BIN="${BENCH_BEFORE_BIN:-$LSTR_CACHE/before-$BEFORE_REV/ls-token-refresher}"
if [[ ! -x "$BEFORE_BIN" ]]; then
  log "building $BEFORE_REV (release, once; cached as $BEFORE_BIN)"
  src="$LSTR_CACHE/before-$BEFORE_REV/src"
  rm -rf "$src" && mkdir -p "$src"
  git archive "$BEFORE_REV" | tar -x -C "$src"
  (cd "$src" && CARGO_TARGET_DIR="$LSTR_CACHE/before-$BEFORE_REV/target" timeout 1800 nice cargo build --release --quiet)
  cp "$LSTR_CACHE/before-$BEFORE_REV/target/release/ls-token-refresher" "$BEFORE_BIN.tmp"
  mv "$BEFORE_BIN.tmp" "$BEFORE_BIN"
fi

# shellcheck source=../tests/support/ls/lib.sh
source tests/support/ls/lib.sh
log "starting Label Studio (access tokens live ${TTL} s)"
ls_start "$WORK/ls" "$TTL"
# The PAT file gets a directory of its own, as a mounted Secret has: ours watches that directory with
# inotify, and the harness writes its perf output into $WORK (each new file there would wake it).
mkdir -p "$WORK/pat.d"
umask 077
ls_create_pat >"$WORK/pat.d/pat"
umask 022

timeout $(( (RUNS * (${WINDOW%.*} + 150)) + 300 )) "$PY" bench/idle.py --ls-url "$LS_URL" --bin "$BIN" \
  --before-bin "$BEFORE_BIN" --python "$PY" --work "$WORK" --pat-file "$WORK/pat.d/pat" --ttl "$TTL" \
  --runs "$RUNS" --window "$WINDOW" --out "$WORK/idle.json"
echo
echo "Machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs) x$(nproc), Linux $(uname -r);" \
  "Label Studio $(curl -fsS "$LS_URL/api/version" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["release"])');" \
  "$(date -u '+%Y-%m-%d %H:%M UTC'); before = $BEFORE_REV, after = $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src || echo '+changes')"
