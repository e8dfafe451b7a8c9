#!/usr/bin/env bash
# The absolute-URL experiment behind docs/consumers.md ("Host handling"): a real Label Studio 1.23.2 behind nginx
# injecting a long-lived access token, with four Host treatments, probed by url_probe.py.
#   a  pass       proxy forwards the client's Host unchanged            (proxy_set_header Host $http_host)
#   b  upstream   proxy rewrites Host to the upstream's                 (Host 127.0.0.1:<LS port>)
#   c  forwarded  as b, plus X-Forwarded-Host/-Proto/-Port = the client's
#   d  ls-host    as a, Label Studio started with LABEL_STUDIO_HOST=<its own direct URL> (what deployments set for
#                 their public URL) and a Local Files storage, so it builds absolute file URLs from that setting
#
# Usage: bash tests/support/consumers/url_experiment.sh [OUT_DIR]   (default: a temp dir; printed at the end)
# Needs nothing running; starts and stops its own Label Studio and nginx (~1 min).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../../.."
ROOT=$PWD
OUT=${1:-$(mktemp -d /tmp/lstr-url-experiment.XXXXXX)}
mkdir -p "$OUT"
bash tests/support/ls/provision.sh >/dev/null
# shellcheck disable=SC1090
source "$(bash tests/support/consumers/provision.sh --env-file)"
# shellcheck source=../ls/lib.sh
source tests/support/ls/lib.sh
# shellcheck source=../../../bench/proxy/nginx.sh
source bench/proxy/nginx.sh
WORK=$(mktemp -d /tmp/lstr-url-work.XXXXXX)
cleanup() { nginx_stop_all; ls_stop; rm -rf "$WORK"; }
trap cleanup EXIT

TTL=86400
access_token() {
  local pat
  pat=$(ls_create_pat)
  curl -fsS -H 'Content-Type: application/json' -d "{\"refresh\":\"$pat\"}" "$LS_URL/api/token/refresh/" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["access"])'
}

run_mode() { # NAME HOST_HEADER FORWARDED [PROBE_LOCAL_FILES_DIR]
  local name=$1 host=$2 fwd=$3 lf=${4:-} port dir
  port=$(free_port)
  dir=$WORK/nginx-$name
  mkdir -p "$dir"
  nginx_render bench/proxy/nginx-inject.conf.template "$dir/nginx.conf" PREFIX="$dir" WORKERS=1 \
    LISTEN="127.0.0.1:$port" UPSTREAM="127.0.0.1:$LS_PORT" "AUTHORIZATION=Bearer $ACCESS" \
    "HOST_HEADER=$host" "FORWARDED=$fwd" LOCAL_REFRESH= ACCESS_LOG="$OUT/access-$name.log lstr"
  nginx_start "$dir" "$dir/nginx.conf" "$port"
  (cd "$ROOT/tests/support/consumers" && env LABEL_STUDIO_URL="http://127.0.0.1:$port" \
    LABEL_STUDIO_API_KEY=placeholder-not-a-token PROBE_LOCAL_FILES_DIR="$lf" HOME="$WORK/home-$name" \
    "$LSTR_SDK_PYTHON" url_probe.py >"$OUT/probe-$name.json")
  nginx_stop "$NGINX_PID"
  python3 - "$OUT/probe-$name.json" "$name" "$port" "$LS_PORT" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1])); name, pport, lport = sys.argv[2:]
print(f'== mode {name}: client -> proxy 127.0.0.1:{pport} -> Label Studio 127.0.0.1:{lport}')
for s in r['steps']:
    for u in s['absolute_urls']:
        print(f"   {s['what']:<38} {u['where']:<22} {u['url'][:90]}  {'PROXY' if u['is_proxy_origin'] else 'OTHER ORIGIN'}")
    if s['location'] and not s['absolute_urls']:
        print(f"   {s['what']:<38} Location (relative)    {s['location']}")
for g in r['get_local_path']:
    reqs = '; '.join(f"{q['origin']}{q['path']} auth={q['auth_sent']} -> {q['status']}" for q in g['requests'])
    print(f"   get_local_path: {g['what']}: {g['result']}  [{reqs}]")
if r.get('follow_next'):
    f = r['follow_next']; print(f"   following next ({f['origin']}) with the placeholder key -> {f['status']}")
print('   summary:', json.dumps(r['summary']))
EOF
}

# --- Label Studio without LABEL_STUDIO_HOST (stock) ---
ls_start "$WORK/ls1" "$TTL"
ls_set_org_tokens true false
ACCESS=$(access_token)
run_mode a-pass '$http_host' ''
run_mode b-upstream "127.0.0.1:$LS_PORT" ''
run_mode c-forwarded "127.0.0.1:$LS_PORT" 'proxy_set_header X-Forwarded-Host $http_host; proxy_set_header X-Forwarded-Proto $scheme; proxy_set_header X-Forwarded-Port $server_port;'
ls_stop

# --- Label Studio with LABEL_STUDIO_HOST set to its own direct URL, and Local Files serving ---
LFROOT=$WORK/localfiles
mkdir -p "$LFROOT/images"
want=$(free_port)
LS_WANT_PORT=$want ls_start "$WORK/ls2" "$TTL" "LABEL_STUDIO_HOST=http://127.0.0.1:$want" \
  LOCAL_FILES_SERVING_ENABLED=true "LOCAL_FILES_DOCUMENT_ROOT=$LFROOT"
# ls_start waited for /health on $want: had the port been busy, Label Studio would have moved and this failed.
ls_set_org_tokens true false
ACCESS=$(access_token)
run_mode d-ls-host '$http_host' '' "$LFROOT/images"
ls_stop
echo "reports: $OUT"
