#!/usr/bin/env bash
# Proxy benchmark (bench/, not a test: it asserts nothing about time). Side by side, in the same run:
#   (a) upstream       wrk -> the upstream directly                                   (the baseline)
#   (b) nginx-proxy    wrk -> nginx injecting a static Authorization -> upstream      (the reference proxy)
#   (c) lstr-proxy     wrk -> `ls-token-refresher proxy` (its own refresh loop) -> upstream
#   (d) lstr-gate      wrk -> `ls-token-refresher gate` (the caller's token verified once, then a cached verdict)
#                      -> upstream (trivial upstream only; its "Label Studio" is a second nginx answering whoami)
# The upstream is either the trivial one (--upstream trivial, default: nginx answering a small static JSON body,
# which is also a token-refresh answer, so (c)'s refresh loop gets a token from it) or a real Label Studio
# (--upstream label-studio: GET /api/current-user/whoami, a cheap authenticated endpoint; access tokens live 1 h so
# nginx's static header stays valid for the whole run).
# Each run visits a, b, c in turn (interleaved, so drift hits all alike) in two phases:
#   throughput  wrk -c CONNECTIONS (saturating): requests/s; its latencies are mostly queueing
#   latency     wrk -c 1 (one request in flight): the latency a proxy adds to a request, without queueing
# Several runs give min/median/max of requests/s and latency p50/p99 (exact percentiles from wrk's Lua `done`
# hook: report.lua), the added latency of each proxy = its p50/p99 minus the upstream's in the same run and
# phase, and the CPU each target's process tree used per request (/proc utime+stime). Then (trivial upstream
# only) an RSS phase: each proxy under --rss-connections concurrent connections, peak RSS of its process tree.
#
# Then (trivial upstream only) a large-body phase: --large-mib MiB downloaded (GET, served by the upstream nginx
# from tmpfs with sendfile) and uploaded (PUT, stored by the upstream nginx on tmpfs) with curl through each target,
# --runs times: MB/s, the target's CPU, and its RSS before and at peak during the transfer (sampled every 0.1 s).
#
# "On one core": with 2+ CPUs both proxies are pinned to CPU 1 (taskset; nginx with 1 worker, ours is a
# single-threaded runtime anyway) and wrk and the upstream to CPU 0 (--no-pin: no pinning).
#
# Usage: bash bench/proxy/run.sh [--upstream trivial|label-studio] [--runs 5] [--duration 10]
#          [--connections 50] [--threads 1] [--workers 1] [--rss-connections 1000] [--rss-duration 5]
#          [--large-mib 512] [--only-large] [--no-pin] [--profile] [--out DIR]
#   --large-mib  size of the large-body phase's body (0: no large-body phase); --only-large: only that phase
#   --workers  nginx worker_processes for the proxy (1 = the issue's "on one core" comparison)
#   --profile  then, for each proxy under wrk -c CONNECTIONS: CPU, context switches and system calls per request
#              (perf stat), and a call-graph profile of ours (perf record; builds a release binary with symbols
#              in $CARGO_TARGET_DIR-symbols unless BENCH_LSTR_BIN is given); reports in OUT/profile/
# Env: BENCH_LSTR_BIN (default: cargo build --release, $CARGO_TARGET_DIR/release/ls-token-refresher),
#      BENCH_LSTR_PROXY_CMD (replace (c): a command line with {listen} {upstream} {pat_file}).
# Machine: shared cores: compare numbers within one run only.
# Needs: tests/support/consumers/provision.sh (nginx-light + wrk, unpacked); for label-studio also
# tests/support/ls/provision.sh. Loopback only; bounded in time; everything started is stopped by PID.
set -euo pipefail
UPSTREAM=trivial RUNS=5 DURATION=10 CONNS=50 THREADS=1 WORKERS=1 RSS_CONNS=1000 RSS_DURATION=5 OUT="" PIN=1 PROFILE=0
LARGE_MIB=512 ONLY_LARGE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --upstream) UPSTREAM=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --connections) CONNS=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    --workers) WORKERS=$2; shift 2 ;;
    --rss-connections) RSS_CONNS=$2; shift 2 ;;
    --rss-duration) RSS_DURATION=$2; shift 2 ;;
    --no-pin) PIN=0; shift ;;
    --profile) PROFILE=1; shift ;;
    --large-mib) LARGE_MIB=$2; shift 2 ;;
    --only-large) ONLY_LARGE=1; shift ;;
    --out) OUT=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
case "$UPSTREAM" in trivial | label-studio) ;; *) echo "--upstream trivial|label-studio" >&2; exit 2 ;; esac
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$PWD
HERE=$ROOT/bench/proxy
export LSTR_CACHE="${LSTR_CACHE:-/var/tmp/ls-token-refresher}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$LSTR_CACHE/target}"
# shellcheck disable=SC1090
source "$(bash tests/support/consumers/provision.sh --env-file)"
# shellcheck source=nginx.sh
source "$HERE/nginx.sh"
OUT=${OUT:-$(mktemp -d /tmp/lstr-bench-proxy.XXXXXX)}
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/lstr-bench-proxy-work.XXXXXX)
# The large-body phase's files live on tmpfs, so the disk is not what is measured.
DATA_ROOT=$(mktemp -d /dev/shm/lstr-bench-proxy-data.XXXXXX)
LSTR_PROXY_PID="" LSTR_GATE_PID=""
cleanup() {
  for p in $LSTR_PROXY_PID $LSTR_GATE_PID; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  nginx_stop_all
  declare -F ls_stop >/dev/null && ls_stop
  rm -rf "$WORK" "$DATA_ROOT"
}
trap cleanup EXIT
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
log() { printf '[bench] %s\n' "$*" >&2; }

LOAD_PIN=() PROXY_PIN=() LOAD_CPU="" PROXY_CPU="" PIN_DESC="none (the scheduler's choice)"
if [ "$PIN" = 1 ] && [ "$(nproc)" -ge 2 ]; then
  LOAD_CPU=0 PROXY_CPU=1
  LOAD_PIN=(taskset -c "$LOAD_CPU") PROXY_PIN=(taskset -c "$PROXY_CPU")
  PIN_DESC="proxies on CPU $PROXY_CPU, wrk and the upstream on CPU $LOAD_CPU"
  log "pinning: $PIN_DESC"
fi

if [ -z "${BENCH_LSTR_BIN:-}" ] && [ -z "${BENCH_LSTR_PROXY_CMD:-}" ]; then
  if [ "$PROFILE" = 1 ]; then
    # The same release profile, with symbols and line tables, in a target dir of its own.
    log "cargo build --release (with symbols, for the profile)"
    export CARGO_TARGET_DIR=$CARGO_TARGET_DIR-symbols
    CARGO_PROFILE_RELEASE_STRIP=false CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \
      timeout 2400 nice cargo build --release --quiet
  else
    log "cargo build --release"
    timeout 1500 nice cargo build --release --quiet
  fi
fi
BIN=${BENCH_LSTR_BIN:-$CARGO_TARGET_DIR/release/ls-token-refresher}

tree_pids() { echo "$1"; pgrep -P "$1" || true; } # PID and its children, one a line
tree_sum() { # PID FILE AWK -> the sum of AWK's output on /proc/P/FILE over PID and its children (nginx's workers)
  local p sum=0 v
  for p in $(tree_pids "$1"); do
    v=$(awk "$3" "/proc/$p/$2" 2>/dev/null || echo 0)
    sum=$((sum + ${v:-0}))
  done
  echo "$sum"
}
# shellcheck disable=SC2016 # awk programs, not shell expansions
tree_cpu_ticks() { tree_sum "$1" stat '{sub(/.*\) /, ""); print $12 + $13}'; } # utime + stime, clock ticks
# shellcheck disable=SC2016
tree_rss_kib() { tree_sum "$1" status '/^VmRSS:/ {print $2}'; }

# ---- the upstream -------------------------------------------------------------------------------------------
REQ_PATH=/api/current-user/whoami
WRK_HEADER=()
if [ "$UPSTREAM" = trivial ]; then
  # Its one static body also answers a token refresh: {"access": <unsigned JWT, exp in 1 day>}, so (c)'s refresh
  # loop gets a token-shaped answer (and 200 for its validation request).
  STANDIN=$(python3 "$ROOT/tests/support/consumers/placeholder_jwt.py" --type access --ttl 86400)
  BODY="{\"access\": \"$STANDIN\"}"
  UP_PORT=$(free_port)
  mkdir -p "$WORK/upstream"
  nginx_render "$HERE/nginx-upstream.conf.template" "$WORK/upstream/nginx.conf" PREFIX="$WORK/upstream" WORKERS=1 \
    LISTEN="127.0.0.1:$UP_PORT" "BODY=$BODY" DATA_ROOT="$DATA_ROOT"
  NGINX_CPUS=$LOAD_CPU nginx_start "$WORK/upstream" "$WORK/upstream/nginx.conf" "$UP_PORT"
  UPSTREAM_PID=$NGINX_PID
  UPSTREAM_URL=http://127.0.0.1:$UP_PORT
  ACCESS=$STANDIN
  # The PAT (c) holds: an unsigned refresh-type JWT (the trivial upstream accepts anything).
  python3 "$ROOT/tests/support/consumers/placeholder_jwt.py" --type refresh >"$WORK/pat"
  # Every target gets the same request bytes: the caller's access token, which the proxy replaces and the gate
  # verifies (once: the rest of the run is served from its cached verdict) and removes.
  WRK_HEADER=(-H "Authorization: Bearer $ACCESS")
else
  timeout 1200 bash tests/support/ls/provision.sh >"$WORK/provision-ls.log" 2>&1 || {
    tail -n 30 "$WORK/provision-ls.log"; exit 1; }
  # shellcheck source=../../tests/support/ls/lib.sh
  source tests/support/ls/lib.sh
  log "starting Label Studio (access tokens live 3600 s)"
  ls_start "$WORK/ls" 3600
  if [ -n "$LOAD_CPU" ]; then
    for p in $(tree_pids "$LS_PID"); do taskset -a -p -c "$LOAD_CPU" "$p" >/dev/null; done
  fi
  UPSTREAM_PID=$LS_PID
  UPSTREAM_URL=$LS_URL
  (umask 077; ls_create_pat >"$WORK/pat")
  ACCESS=$(python3 -c 'import json,sys,urllib.request as u
r=u.Request(sys.argv[1]+"/api/token/refresh",data=json.dumps({"refresh":open(sys.argv[2]).read().strip()}).encode(),headers={"Content-Type":"application/json"})
print(json.load(u.urlopen(r,timeout=30))["access"])' "$LS_URL" "$WORK/pat")
  BODY=$(curl -fsS -H "Authorization: Bearer $ACCESS" "$LS_URL$REQ_PATH")
  # Every target gets the same request bytes; both proxies replace this header with their own.
  WRK_HEADER=(-H "Authorization: Bearer $ACCESS")
fi

# ---- (b) the reference proxy: nginx injecting a static header ----------------------------------------------
NG_PORT=$(free_port)
mkdir -p "$WORK/nginx-proxy"
nginx_render "$HERE/nginx-inject.conf.template" "$WORK/nginx-proxy/nginx.conf" PREFIX="$WORK/nginx-proxy" \
  WORKERS="$WORKERS" LISTEN="127.0.0.1:$NG_PORT" UPSTREAM="${UPSTREAM_URL#http://}" "AUTHORIZATION=Bearer $ACCESS" \
  "HOST_HEADER=\$http_host" FORWARDED= LOCAL_REFRESH= ACCESS_LOG=off
NGINX_CPUS=$PROXY_CPU nginx_start "$WORK/nginx-proxy" "$WORK/nginx-proxy/nginx.conf" "$NG_PORT"
NGINX_PROXY_PID=$NGINX_PID

# ---- (c) ls-token-refresher's proxy ---------------------------------------------------------------------------
# start_lstr_proxy LISTEN_PORT UPSTREAM_URL WORKDIR: starts `ls-token-refresher proxy` (release build, default flags
# but the PAT file and the addresses; it validates its token with GET /api/current-user/whoami like in production)
# in the background, sets LSTR_PROXY_PID, returns 0 once it serves a 200 through to the upstream.
start_lstr_proxy() {
  local port=$1 upstream=$2 dir=$3 cmd
  mkdir -p "$dir"
  if [ -n "${BENCH_LSTR_PROXY_CMD:-}" ]; then
    cmd=${BENCH_LSTR_PROXY_CMD//\{listen\}/127.0.0.1:$port}
    cmd=${cmd//\{upstream\}/$upstream}
    cmd=${cmd//\{pat_file\}/$WORK/pat}
    "${PROXY_PIN[@]}" bash -c "exec $cmd" >"$dir/proxy.log" 2>&1 &
  else
    "${PROXY_PIN[@]}" "$BIN" proxy --url "$upstream" --pat-file "$WORK/pat" --proxy-addr "127.0.0.1:$port" \
      --admin-addr 127.0.0.1:0 >"$dir/proxy.log" 2>&1 &
  fi
  LSTR_PROXY_PID=$!
  for _ in $(seq 1 300); do
    kill -0 "$LSTR_PROXY_PID" 2>/dev/null || { log "lstr proxy exited: $(tail -n 5 "$dir/proxy.log")"; return 1; }
    # 503 until the first token is held.
    [ "$(curl -s -o /dev/null -w '%{http_code}' "${WRK_HEADER[@]}" "http://127.0.0.1:$port$REQ_PATH")" = 200 ] && return 0
    sleep 0.1
  done
  log "lstr proxy did not serve a 200 in 30 s: $(tail -n 5 "$dir/proxy.log")"
  return 1
}
LS_PORT_PROXY=$(free_port)
TARGETS=("upstream|$UPSTREAM_URL$REQ_PATH|$UPSTREAM_PID" "nginx-proxy|http://127.0.0.1:$NG_PORT$REQ_PATH|$NGINX_PROXY_PID")
start_lstr_proxy "$LS_PORT_PROXY" "$UPSTREAM_URL" "$WORK/lstr-proxy" || exit 1
TARGETS+=("lstr-proxy|http://127.0.0.1:$LS_PORT_PROXY$REQ_PATH|$LSTR_PROXY_PID")

# ---- (d) ls-token-refresher's gate (trivial upstream) -----------------------------------------------------------
# Its Label Studio answers whoami with a user of organization 1; --gate-cache-ttl 1h keeps the verdict cached for
# the whole run (the default 60 s would add one whoami call a minute), so what is measured is the cached path.
if [ "$UPSTREAM" = trivial ]; then
  WHOAMI_PORT=$(free_port)
  mkdir -p "$WORK/whoami"
  nginx_render "$HERE/nginx-upstream.conf.template" "$WORK/whoami/nginx.conf" PREFIX="$WORK/whoami" WORKERS=1 \
    LISTEN="127.0.0.1:$WHOAMI_PORT" 'BODY={"id": 1, "email": "bench@example.org", "username": "bench", "active_organization": 1}' \
    DATA_ROOT="$DATA_ROOT"
  NGINX_CPUS=$LOAD_CPU nginx_start "$WORK/whoami" "$WORK/whoami/nginx.conf" "$WHOAMI_PORT"
  GATE_PORT=$(free_port)
  mkdir -p "$WORK/lstr-gate"
  "${PROXY_PIN[@]}" "$BIN" gate --url "http://127.0.0.1:$WHOAMI_PORT" --backend-url "$UPSTREAM_URL" \
    --gate-addr "127.0.0.1:$GATE_PORT" --gate-allow-org 1 --gate-cache-ttl 1h --admin-addr 127.0.0.1:0 \
    >"$WORK/lstr-gate/gate.log" 2>&1 &
  LSTR_GATE_PID=$!
  for _ in $(seq 1 100); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "${WRK_HEADER[@]}" "http://127.0.0.1:$GATE_PORT$REQ_PATH")" = 200 ] && break
    kill -0 "$LSTR_GATE_PID" 2>/dev/null || { log "lstr gate exited: $(tail -n 5 "$WORK/lstr-gate/gate.log")"; exit 1; }
    sleep 0.1
  done
  TARGETS+=("lstr-gate|http://127.0.0.1:$GATE_PORT$REQ_PATH|$LSTR_GATE_PID")
fi

# Sanity: every target answers 200 with the upstream's body (Label Studio's whoami: the same user; the body itself
# carries a last-activity time).
same() { if [ "$UPSTREAM" = trivial ]; then cat; else python3 -c 'import json,sys; print(json.load(sys.stdin)["email"])'; fi; }
want=$(same <<<"$BODY")
for t in "${TARGETS[@]}"; do
  IFS='|' read -r name url _ <<<"$t"
  got=$(curl -fsS "${WRK_HEADER[@]}" "$url" | same)
  [ "$got" = "$want" ] || { log "$name did not return the upstream's answer: ${got:0:80}"; exit 1; }
done

wrk_run() { # URL CONNS DURATION -> WRK_JSON line
  local out
  out=$("${LOAD_PIN[@]}" "$LSTR_WRK" -t "$THREADS" -c "$2" -d "${3}s" --timeout 5s -s "$HERE/report.lua" \
    "${WRK_HEADER[@]}" "$1" 2>&1) || true
  grep '^WRK_JSON ' <<<"$out" | sed 's/^WRK_JSON //' || { echo "wrk failed: $out" >&2; return 1; }
}

CLK_TCK=$(getconf CLK_TCK)
: >"$OUT/runs.jsonl"
[ "$ONLY_LARGE" = 1 ] || log "warm-up (2 s each)"
for t in "${TARGETS[@]}"; do
  [ "$ONLY_LARGE" = 1 ] && break
  IFS='|' read -r name url _ <<<"$t"; wrk_run "$url" "$CONNS" 2 >/dev/null
done
for r in $(seq 1 "$RUNS"); do
  [ "$ONLY_LARGE" = 1 ] && break
  for phase in "throughput:$CONNS" "latency:1"; do
    for t in "${TARGETS[@]}"; do
      IFS='|' read -r name url pid <<<"$t"
      c0=$(tree_cpu_ticks "$pid")
      j=$(wrk_run "$url" "${phase#*:}" "$DURATION")
      c1=$(tree_cpu_ticks "$pid")
      printf '{"run":%d,"phase":"%s","connections":%d,"target":"%s","cpu_s":%s,%s\n' \
        "$r" "${phase%%:*}" "${phase#*:}" "$name" "$(awk -v d=$((c1 - c0)) -v h="$CLK_TCK" 'BEGIN{print d/h}')" \
        "${j#\{}" >>"$OUT/runs.jsonl"
      log "run $r/$RUNS ${phase%%:*} $name: $j"
    done
  done
done

# ---- RSS under many connections (trivial upstream: Label Studio's dev server cannot hold 1000) ----------------
: >"$OUT/rss.jsonl"
if [ "$UPSTREAM" = trivial ] && [ "$ONLY_LARGE" = 0 ]; then
  for t in "${TARGETS[@]}"; do
    IFS='|' read -r name url pid <<<"$t"
    [ "$name" = upstream ] && continue
    idle=$(tree_rss_kib "$pid")
    "${LOAD_PIN[@]}" "$LSTR_WRK" -t "$THREADS" -c "$RSS_CONNS" -d "${RSS_DURATION}s" --timeout 5s \
      -s "$HERE/report.lua" "${WRK_HEADER[@]}" "$url" >"$WORK/rss-wrk-$name.out" 2>&1 &
    wpid=$!
    peak=0
    while kill -0 "$wpid" 2>/dev/null; do
      v=$(tree_rss_kib "$pid"); [ "$v" -gt "$peak" ] && peak=$v
      sleep 0.2
    done
    wait "$wpid" || true
    after=$(tree_rss_kib "$pid")
    j=$(grep '^WRK_JSON ' "$WORK/rss-wrk-$name.out" | sed 's/^WRK_JSON //' || echo '{}')
    printf '{"target":"%s","connections":%d,"rss_idle_kib":%d,"rss_peak_kib":%d,"rss_after_kib":%d,"wrk":%s}\n' \
      "$name" "$RSS_CONNS" "$idle" "$peak" "$after" "$j" >>"$OUT/rss.jsonl"
    log "RSS $name: idle ${idle} KiB, peak ${peak} KiB under $RSS_CONNS connections, ${after} KiB after"
  done
fi

# ---- large bodies (trivial upstream): one transfer at a time, MB/s and RSS during it ---------------------------
# large_run NAME BASE_URL PID DIRECTION: one curl transfer of $LARGE_MIB MiB (download: GET of the file; upload: PUT
# of it) while sampling the target's RSS; appends a line to large.jsonl.
large_run() {
  local name=$1 base=$2 pid=$3 dir=$4 r=$5 cpid peak=0 before after c0 c1 v out
  local args=(-sS -o /dev/null -H 'Expect:' "${WRK_HEADER[@]}")
  if [ "$dir" = download ]; then
    args+=(-w '%{http_code} %{size_download} %{time_total}' "$base/data/large.bin")
  else
    args+=(-w '%{http_code} %{size_upload} %{time_total}' -T "$DATA_ROOT/large.bin" "$base/data/upload/in.bin")
  fi
  before=$(tree_rss_kib "$pid")
  c0=$(tree_cpu_ticks "$pid")
  "${LOAD_PIN[@]}" curl "${args[@]}" >"$WORK/large.out" 2>&1 &
  cpid=$!
  while kill -0 "$cpid" 2>/dev/null; do
    v=$(tree_rss_kib "$pid"); [ "$v" -gt "$peak" ] && peak=$v
    sleep 0.1
  done
  wait "$cpid" || { log "curl failed ($name $dir): $(cat "$WORK/large.out")"; return 1; }
  c1=$(tree_cpu_ticks "$pid")
  after=$(tree_rss_kib "$pid")
  read -r code bytes secs <"$WORK/large.out"
  case "$code" in 200 | 201 | 204) ;; *) log "$name $dir: HTTP $code"; return 1 ;; esac
  [ "$bytes" = "$((LARGE_MIB * 1048576))" ] || { log "$name $dir: $bytes bytes moved"; return 1; }
  printf '{"run":%d,"direction":"%s","target":"%s","bytes":%s,"seconds":%s,"cpu_s":%s,"rss_before_kib":%d,"rss_peak_kib":%d,"rss_after_kib":%d}\n' \
    "$r" "$dir" "$name" "$bytes" "$secs" "$(awk -v d=$((c1 - c0)) -v h="$CLK_TCK" 'BEGIN{print d/h}')" \
    "$before" "$peak" "$after" >>"$OUT/large.jsonl"
  log "large run $r $dir $name: $(awk -v b="$bytes" -v s="$secs" 'BEGIN{printf "%.0f MB/s", b/s/1e6}'), RSS ${before} -> peak ${peak} KiB"
}
: >"$OUT/large.jsonl"
if [ "$UPSTREAM" = trivial ] && [ "$LARGE_MIB" -gt 0 ]; then
  head -c "$((LARGE_MIB * 1048576))" /dev/urandom >"$DATA_ROOT/large.bin"
  mkdir -p "$DATA_ROOT/.tmp" "$DATA_ROOT/data/upload"
  ln -f "$DATA_ROOT/large.bin" "$DATA_ROOT/data/large.bin"
  # nginx's workers run as an unprivileged user when started as root: they read the file and store uploads.
  chmod 755 "$DATA_ROOT" "$DATA_ROOT/data"
  chmod 644 "$DATA_ROOT/large.bin"
  chmod 1777 "$DATA_ROOT/.tmp" "$DATA_ROOT/data/upload"
  for r in $(seq 1 "$RUNS"); do
    for dir in download upload; do
      for t in "${TARGETS[@]}"; do
        IFS='|' read -r name url pid <<<"$t"
        [ "$name" = lstr-gate ] && continue
        large_run "$name" "${url%"$REQ_PATH"}" "$pid" "$dir" "$r" || exit 1
        rm -f "$DATA_ROOT/data/upload/in.bin"
      done
    done
  done
fi

# ---- profile (--profile) -------------------------------------------------------------------------------------
# under_load NAME URL SECONDS CMD...: runs CMD (a perf command) while wrk -c CONNS loads URL (from 1 s after wrk's
# start); wrk's JSON line goes to $WORK/profile-wrk-NAME.out.
under_load() {
  local name=$1 url=$2 secs=$3 wpid
  shift 3
  "${LOAD_PIN[@]}" "$LSTR_WRK" -t "$THREADS" -c "$CONNS" -d "$((secs + 2))s" --timeout 5s -s "$HERE/report.lua" \
    "${WRK_HEADER[@]}" "$url" >"$WORK/profile-wrk-$name.out" 2>&1 &
  wpid=$!
  sleep 1
  "$@" >/dev/null 2>&1 || true
  wait "$wpid" || true
}
if [ "$PROFILE" = 1 ]; then
  mkdir -p "$OUT/profile"
  : >"$OUT/profile/per-request.txt"
  for t in "${TARGETS[@]}"; do
    IFS='|' read -r name url pid <<<"$t"
    [ "$name" = upstream ] && continue
    pids=$(tree_pids "$pid" | paste -sd,)
    # CPU, context switches and system calls per request; requests = wrk's rate x the stat window.
    under_load "$name" "$url" "$DURATION" perf stat -x, -e cpu-clock,context-switches,raw_syscalls:sys_enter \
      -p "$pids" -o "$WORK/stat-$name.csv" -- sleep "$DURATION"
    # Where that CPU is: kernel vs user space (by object).
    under_load "$name-dso" "$url" "$DURATION" perf record -q -e cpu-clock -F 999 -p "$pids" \
      -o "$WORK/perf-$name-dso.data" -- sleep "$DURATION"
    perf report -i "$WORK/perf-$name-dso.data" --no-children --sort dso --stdio -g none 2>/dev/null \
      | grep -v '^#' | grep -v '^$' >"$OUT/profile/by-dso-$name.txt" || true
    python3 "$HERE/summary.py" --per-request "$name" "$WORK/stat-$name.csv" "$WORK/profile-wrk-$name.out" \
      "$DURATION" "$OUT/profile/by-dso-$name.txt" >>"$OUT/profile/per-request.txt"
  done
  if [ -z "${BENCH_LSTR_PROXY_CMD:-}" ]; then
    # Ours with call graphs (needs the binary with symbols).
    under_load lstr-record "http://127.0.0.1:$LS_PORT_PROXY$REQ_PATH" "$DURATION" perf record -q -e cpu-clock -F 999 \
      --call-graph dwarf,16384 -p "$LSTR_PROXY_PID" -o "$WORK/perf.data" -- sleep "$((DURATION / 2 > 2 ? DURATION / 2 : 2))"
    perf report -i "$WORK/perf.data" --children --sort sym --stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^$' \
      | cut -c1-220 >"$OUT/profile/inclusive.txt" || true
    perf report -i "$WORK/perf.data" --no-children --sort sym --stdio -g none 2>/dev/null | grep -v '^#' \
      | grep -v '^$' | sed -n 1,80p | cut -c1-220 >"$OUT/profile/self.txt" || true
  fi
  log "profile: $OUT/profile/"
fi

{
  echo "proxy benchmark, upstream: $UPSTREAM ($REQ_PATH); $RUNS runs x ${DURATION}s per target and phase, wrk -t$THREADS;"
  echo "nginx proxy workers=$WORKERS; pinning: $PIN_DESC;"
  echo "nginx $LSTR_NGINX_VERSION, wrk $LSTR_WRK_VERSION, $("$BIN" --version 2>/dev/null || echo '?');" \
    "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs) x$(nproc), Linux $(uname -r); $(date -u '+%Y-%m-%d %H:%M UTC')"
  python3 "$HERE/summary.py" "$OUT"
  if [ -s "$OUT/profile/per-request.txt" ]; then
    echo; echo "[profile: wrk -c $CONNS, perf stat / perf record over ${DURATION}s]"; cat "$OUT/profile/per-request.txt"
  fi
} | tee "$OUT/summary.txt"
echo "raw results: $OUT" >&2
