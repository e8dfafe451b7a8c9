#!/usr/bin/env bash
# Proxy benchmark groundwork (bench/, not a test: it asserts nothing about time).
# Side by side, in the same run, against a trivial upstream (nginx answering a small static JSON body):
#   (a) upstream       wrk -> upstream directly                      (the baseline)
#   (b) nginx-proxy    wrk -> nginx injecting a static Authorization -> upstream   (the reference proxy)
#   (c) lstr-proxy     wrk -> ls-token-refresher proxy -> upstream  (SLOT: start_lstr_proxy below; skipped until filled)
# Each run visits a, b, c in turn (interleaved, so drift hits all alike) in two phases:
#   throughput  wrk -c CONNECTIONS (saturating): requests/s; its latencies are mostly queueing
#   latency     wrk -c 1 (one request in flight): the latency a proxy adds to a request, without queueing
# Several runs give min/median/max of requests/s and latency p50/p99 (exact percentiles from wrk's Lua `done`
# hook: report.lua), and the added latency of each proxy = its p50/p99 minus the upstream's in the same run and
# phase. Then an RSS phase: each proxy under --rss-connections concurrent connections, peak RSS of its process
# tree sampled from /proc.
#
# Usage: bash bench/proxy/run.sh [--runs 5] [--duration 10] [--connections 50] [--threads 1] [--workers 1]
#                                [--rss-connections 1000] [--rss-duration 5] [--out DIR]
#   --workers  nginx worker_processes for the proxy (1 = the issue's "on one core" comparison); the upstream
#              always has 1 worker.
# Machine: 2 cores shared by wrk, the proxy and the upstream: numbers are comparable within one run only.
# Needs: tests/support/consumers/provision.sh (nginx-light + wrk, unpacked). Loopback only; bounded in time.
set -euo pipefail
RUNS=5 DURATION=10 CONNS=50 THREADS=1 WORKERS=1 RSS_CONNS=1000 RSS_DURATION=5 OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) RUNS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --connections) CONNS=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    --workers) WORKERS=$2; shift 2 ;;
    --rss-connections) RSS_CONNS=$2; shift 2 ;;
    --rss-duration) RSS_DURATION=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$PWD
HERE=$ROOT/bench/proxy
# shellcheck disable=SC1090
source "$(bash tests/support/consumers/provision.sh --env-file)"
# shellcheck source=nginx.sh
source "$HERE/nginx.sh"
OUT=${OUT:-$(mktemp -d /tmp/lstr-bench-proxy.XXXXXX)}
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/lstr-bench-proxy-work.XXXXXX)
LSTR_PROXY_PID=""
cleanup() {
  [ -n "$LSTR_PROXY_PID" ] && { kill "$LSTR_PROXY_PID" 2>/dev/null || true; wait "$LSTR_PROXY_PID" 2>/dev/null || true; }
  nginx_stop_all
  rm -rf "$WORK"
}
trap cleanup EXIT
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
log() { printf '[bench] %s\n' "$*" >&2; }

# ---- the trivial upstream ----------------------------------------------------------------------------------
# Its one static body also answers a token refresh: {"access": <unsigned JWT, exp in 1 day>}, so a proxy whose
# refresh loop points at this upstream gets a token-shaped answer (and 200 for any check such as whoami).
STANDIN=$(python3 "$ROOT/tests/support/consumers/placeholder_jwt.py" --type access --ttl 86400)
BODY="{\"access\": \"$STANDIN\"}"
UP_PORT=$(free_port)
mkdir -p "$WORK/upstream"
nginx_render "$HERE/nginx-upstream.conf.template" "$WORK/upstream/nginx.conf" PREFIX="$WORK/upstream" WORKERS=1 \
  LISTEN="127.0.0.1:$UP_PORT" "BODY=$BODY"
nginx_start "$WORK/upstream" "$WORK/upstream/nginx.conf" "$UP_PORT"
UPSTREAM_PID=$NGINX_PID
UPSTREAM_URL=http://127.0.0.1:$UP_PORT

# ---- (b) the reference proxy: nginx injecting a static header ----------------------------------------------
NG_PORT=$(free_port)
mkdir -p "$WORK/nginx-proxy"
nginx_render "$HERE/nginx-inject.conf.template" "$WORK/nginx-proxy/nginx.conf" PREFIX="$WORK/nginx-proxy" \
  WORKERS="$WORKERS" LISTEN="127.0.0.1:$NG_PORT" UPSTREAM="127.0.0.1:$UP_PORT" "AUTHORIZATION=Bearer $STANDIN" \
  "HOST_HEADER=\$http_host" FORWARDED= LOCAL_REFRESH= ACCESS_LOG=off
nginx_start "$WORK/nginx-proxy" "$WORK/nginx-proxy/nginx.conf" "$NG_PORT"
NGINX_PROXY_PID=$NGINX_PID

# ---- (c) ls-token-refresher's proxy: THE SLOT -------------------------------------------------------------------
# start_lstr_proxy LISTEN_PORT UPSTREAM_URL WORKDIR
#   Start the proxy in the background listening on 127.0.0.1:LISTEN_PORT, forwarding to UPSTREAM_URL, set
#   LSTR_PROXY_PID to its PID, return 0 once the port accepts connections; return 1 to skip target (c).
#   Until it is filled in, BENCH_LSTR_PROXY_CMD may supply the command line, with {listen} and {upstream}
#   replaced, e.g.  BENCH_LSTR_PROXY_CMD='target/release/ls-token-refresher proxy --proxy-addr {listen} --url {upstream} …'
start_lstr_proxy() {
  local port=$1 upstream=$2 dir=$3 cmd
  [ -n "${BENCH_LSTR_PROXY_CMD:-}" ] || return 1
  cmd=${BENCH_LSTR_PROXY_CMD//\{listen\}/127.0.0.1:$port}
  cmd=${cmd//\{upstream\}/$upstream}
  mkdir -p "$dir"
  bash -c "exec $cmd" >"$dir/proxy.log" 2>&1 &
  LSTR_PROXY_PID=$!
  local i
  for i in $(seq 1 200); do
    kill -0 "$LSTR_PROXY_PID" 2>/dev/null || { log "lstr proxy exited: $(tail -n 5 "$dir/proxy.log")"; return 1; }
    python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 0.2).close()' "$port" 2>/dev/null && return 0
    sleep 0.05
  done
  return 1
}
LS_PORT_PROXY=$(free_port)
TARGETS=("upstream|$UPSTREAM_URL/|$UPSTREAM_PID" "nginx-proxy|http://127.0.0.1:$NG_PORT/|$NGINX_PROXY_PID")
if start_lstr_proxy "$LS_PORT_PROXY" "$UPSTREAM_URL" "$WORK/lstr-proxy"; then
  TARGETS+=("lstr-proxy|http://127.0.0.1:$LS_PORT_PROXY/|$LSTR_PROXY_PID")
else
  log "(c) lstr-proxy: slot not filled (start_lstr_proxy / BENCH_LSTR_PROXY_CMD) — skipped"
fi

# Sanity: every target answers 200 with the upstream's body.
for t in "${TARGETS[@]}"; do
  IFS='|' read -r name url _ <<<"$t"
  got=$(curl -fsS "${url}api/current-user/whoami")
  [ "$got" = "$BODY" ] || { log "$name did not return the upstream body: ${got:0:80}"; exit 1; }
done

wrk_run() { # URL CONNS DURATION -> WRK_JSON line
  local out
  out=$("$LSTR_WRK" -t "$THREADS" -c "$2" -d "${3}s" --timeout 5s -s "$HERE/report.lua" "$1" 2>&1) || true
  grep '^WRK_JSON ' <<<"$out" | sed 's/^WRK_JSON //' || { echo "wrk failed: $out" >&2; return 1; }
}

log "warm-up (2 s each)"
for t in "${TARGETS[@]}"; do IFS='|' read -r name url _ <<<"$t"; wrk_run "$url" "$CONNS" 2 >/dev/null; done

: >"$OUT/runs.jsonl"
for r in $(seq 1 "$RUNS"); do
  for phase in "throughput:$CONNS" "latency:1"; do
    for t in "${TARGETS[@]}"; do
      IFS='|' read -r name url _ <<<"$t"
      j=$(wrk_run "$url" "${phase#*:}" "$DURATION")
      printf '{"run":%d,"phase":"%s","connections":%d,"target":"%s",%s\n' \
        "$r" "${phase%%:*}" "${phase#*:}" "$name" "${j#\{}" >>"$OUT/runs.jsonl"
      log "run $r/$RUNS ${phase%%:*} $name: $j"
    done
  done
done

# ---- RSS under many idle-ish connections --------------------------------------------------------------------
tree_rss_kib() { # PID -> RSS of PID and its children (nginx master + workers), KiB
  local p sum=0 v
  for p in "$1" $(pgrep -P "$1" || true); do
    v=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
    sum=$((sum + ${v:-0}))
  done
  echo "$sum"
}
: >"$OUT/rss.jsonl"
for t in "${TARGETS[@]}"; do
  IFS='|' read -r name url pid <<<"$t"
  [ "$name" = upstream ] && continue
  idle=$(tree_rss_kib "$pid")
  "$LSTR_WRK" -t "$THREADS" -c "$RSS_CONNS" -d "${RSS_DURATION}s" --timeout 5s -s "$HERE/report.lua" "$url" \
    >"$WORK/rss-wrk-$name.out" 2>&1 &
  wpid=$!
  peak=0
  while kill -0 "$wpid" 2>/dev/null; do
    v=$(tree_rss_kib "$pid"); [ "$v" -gt "$peak" ] && peak=$v
    sleep 0.2
  done
  wait "$wpid" || true
  j=$(grep '^WRK_JSON ' "$WORK/rss-wrk-$name.out" | sed 's/^WRK_JSON //' || echo '{}')
  printf '{"target":"%s","connections":%d,"rss_idle_kib":%d,"rss_peak_kib":%d,"wrk":%s}\n' \
    "$name" "$RSS_CONNS" "$idle" "$peak" "$j" >>"$OUT/rss.jsonl"
  log "RSS $name: idle ${idle} KiB, peak ${peak} KiB under $RSS_CONNS connections"
done

python3 - "$OUT" "$RUNS" "$DURATION" "$CONNS" "$THREADS" "$WORKERS" "$LSTR_NGINX_VERSION" "$LSTR_WRK_VERSION" <<'EOF' | tee "$OUT/summary.txt"
import json, statistics, sys
out, runs, dur, conns, threads, workers, ngv, wrkv = sys.argv[1:]
rows = [json.loads(l) for l in open(f'{out}/runs.jsonl')]
rss = [json.loads(l) for l in open(f'{out}/rss.jsonl')]
targets = list(dict.fromkeys(r['target'] for r in rows))
def mmm(xs, w=8):
    return ' '.join(f'{x:>{w}.0f}' for x in (min(xs), statistics.median(xs), max(xs)))
print(f'proxy benchmark: {runs} runs x {dur}s per target and phase, wrk -t{threads}; proxy nginx workers={workers}; '
      f'nginx {ngv}, wrk {wrkv}')
print('(min median max over runs; latencies in microseconds; "added" = proxy minus upstream in the same run)')
for phase in ('throughput', 'latency'):
    ph = [r for r in rows if r['phase'] == phase]
    if not ph:
        continue
    print(f'\n[{phase}: wrk -c {ph[0]["connections"]}]')
    print(f'{"target":<21} | {"requests/s":^26} | {"p50":^26} | {"p99":^26} | errors')
    for t in targets:
        rs = [r for r in ph if r['target'] == t]
        rps = [r['requests'] / (r['duration_us'] / 1e6) for r in rs]
        print(f'{t:<21} | {mmm(rps)} | {mmm([r["p50_us"] for r in rs])} | {mmm([r["p99_us"] for r in rs])} | '
              f'{sum(r["errors"] for r in rs)}')
    base = {r['run']: r for r in ph if r['target'] == 'upstream'}
    for t in targets:
        if t == 'upstream':
            continue
        rs = [r for r in ph if r['target'] == t and r['run'] in base]
        a50 = [r['p50_us'] - base[r['run']]['p50_us'] for r in rs]
        a99 = [r['p99_us'] - base[r['run']]['p99_us'] for r in rs]
        print(f'{"added by " + t:<21} | {"":>26} | {mmm(a50)} | {mmm(a99)} |')
print()
for r in rss:
    print(f'RSS {r["target"]:<12} idle {r["rss_idle_kib"]/1024:.1f} MiB, peak {r["rss_peak_kib"]/1024:.1f} MiB '
          f'under {r["connections"]} connections (process tree)')
EOF
echo "raw results: $OUT" >&2
