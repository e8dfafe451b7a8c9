#!/usr/bin/env bash
# Validates the consumer proof NOW, before ls-token-refresher's proxy exists: the stock clients against a real
# Label Studio 1.23.2 in a JWT-only organization (legacy tokens off), through nginx injecting a long-lived access
# token (the reference proxy, bench/proxy/nginx-inject.conf.template, Host passed unchanged, POST
# /api/token/refresh[/] answered locally with a stand-in the way our proxy will). Every positive case must pass;
# every negative case (no header injection: Label Studio directly, placeholder key) must fail with 401s — so the
# tests can fail.
#
# Usage: bash tests/support/consumers/validate.sh [--duration SECONDS] [--out DIR]
#   --duration   how long sdk_flow.py and the ML driver loop in the positive cases (default 10)
#   --out        where the JSON summaries and logs go (default: a temp dir, printed)
# Exit 0 iff every case met its expectation. Runs ~1–2 min plus 2×duration. Starts/stops everything it needs.
#
# To prove ls-token-refresher's proxy later, run the same scripts with LABEL_STUDIO_URL = the proxy and a Label
# Studio with a short access-token TTL, and --duration > 3 × TTL (and --min-refreshes 3 for the JWT placeholder).
set -euo pipefail
DURATION=10
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
cd "$(dirname "${BASH_SOURCE[0]}")/../../.."
ROOT=$PWD
C=$ROOT/tests/support/consumers
OUT=${OUT:-$(mktemp -d /tmp/lstr-consumers-validate.XXXXXX)}
mkdir -p "$OUT"
bash tests/support/ls/provision.sh >/dev/null
# shellcheck disable=SC1090
source "$(bash tests/support/consumers/provision.sh --env-file)"
# shellcheck source=../ls/lib.sh
source tests/support/ls/lib.sh
# shellcheck source=../../../bench/proxy/nginx.sh
source bench/proxy/nginx.sh
WORK=$(mktemp -d /tmp/lstr-consumers-work.XXXXXX)
BACKEND_PIDS=()
cleanup() {
  local p
  for p in "${BACKEND_PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  nginx_stop_all
  ls_stop
  rm -rf "$WORK"
}
trap cleanup EXIT

log() { printf '[validate] %s\n' "$*" >&2; }

# --- Label Studio: long access-token TTL (nginx injects one static token), JWT-only org, loopback ML backends allowed
ls_start "$WORK/ls" 86400 ML_BLOCK_LOCAL_IP=false SSRF_PROTECTION_ENABLED=false
cp "$WORK/ls/label-studio.log" "$OUT/label-studio.start.log" 2>/dev/null || true
ls_set_org_tokens true false
ORG=$(ls_login >/dev/null; curl -fsS -b "$LS_JAR" "$LS_URL/api/jwt/settings")
log "Label Studio $LS_URL, org token settings: $ORG"
PAT=$(ls_create_pat)
ACCESS=$(curl -fsS -H 'Content-Type: application/json' -d "{\"refresh\":\"$PAT\"}" "$LS_URL/api/token/refresh/" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["access"])')
EXP=$(python3 -c 'import base64,json,sys; p=sys.argv[1].split(".")[1]; print(json.loads(base64.urlsafe_b64decode(p+"==="))["exp"])' "$ACCESS")

# --- nginx: the reference proxy
NPORT=$(free_port)
NDIR=$WORK/nginx
mkdir -p "$NDIR"
nginx_render bench/proxy/nginx-inject.conf.template "$NDIR/nginx.conf" PREFIX="$NDIR" WORKERS=1 \
  LISTEN="127.0.0.1:$NPORT" UPSTREAM="127.0.0.1:$LS_PORT" "AUTHORIZATION=Bearer $ACCESS" 'HOST_HEADER=$http_host' \
  FORWARDED= "LOCAL_REFRESH=$(nginx_local_refresh_location "$EXP")" ACCESS_LOG="$OUT/nginx-access.log lstr"
nginx_start "$NDIR" "$NDIR/nginx.conf" "$NPORT"
PROXY=http://127.0.0.1:$NPORT
log "nginx (header injection) $PROXY -> $LS_URL"

LEGACY_KEY=placeholder-not-a-token
JWT_KEY=$(python3 "$C/placeholder_jwt.py")

start_backend() { # NAME LABEL_STUDIO_URL [VAR=VALUE...] [-- _wsgi.py args...] -> sets BACKEND_URL
  local name=$1 url=$2 port envs=() args=()
  shift 2
  while [ $# -gt 0 ] && [ "$1" != -- ]; do envs+=("$1"); shift; done
  [ $# -gt 0 ] && shift && args=("$@")
  port=$(free_port)
  env LABEL_STUDIO_URL="$url" LABEL_STUDIO_API_KEY="$LEGACY_KEY" "${envs[@]}" \
    bash "$C/ml_backend/launch.sh" "$port" "$WORK/ml-$name" "${args[@]}" >"$OUT/ml-backend-$name.log" 2>&1 &
  BACKEND_PIDS+=($!)
  BACKEND_URL=http://127.0.0.1:$port
  local i
  for i in $(seq 1 100); do
    curl -fsS "$BACKEND_URL/health" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  log "ML backend $name did not come up"; tail -n 20 "$OUT/ml-backend-$name.log" >&2
  return 1
}

RESULTS=()
FAILED=0
# expect NAME pass|fail CHECK_PY -- COMMAND...   (COMMAND's stdout, a JSON summary, goes to $OUT/NAME.json)
expect() {
  local name=$1 want=$2 check=$3 rc=0 verdict
  shift 4
  "$@" >"$OUT/$name.json" 2>"$OUT/$name.stderr" || rc=$?
  if verdict=$(python3 - "$OUT/$name.json" "$want" "$rc" "$check" <<'EOF'
import json, sys
path, want, rc, check = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
try:
    d = json.load(open(path))
except Exception as e:
    print(f'no JSON summary ({e})'); sys.exit(1)
w = d.get('wire', {})
extra = eval(check, {'d': d, 'w': w}) if check else True
brief = f"rc={rc} 401s={w.get('status_401')} requests={w.get('requests')} refresh_posts={w.get('refresh_posts')}"
if want == 'pass':
    ok = rc == 0 and d.get('ok') is True and extra
else:
    ok = rc != 0 and d.get('ok') is False and extra
print(brief + ('' if ok else f" failures={d.get('failures')}"))
sys.exit(0 if ok else 1)
EOF
  ); then
    RESULTS+=("OK    $name (expected $want): $verdict")
  else
    RESULTS+=("WRONG $name (expected $want): $verdict")
    FAILED=1
  fi
  log "${RESULTS[-1]}"
}

run_sdk() { # LABEL_STUDIO_URL KEY [args...]
  local url=$1 key=$2
  shift 2
  (cd "$C" && env -i PATH=/usr/bin:/bin HOME="$WORK/home" LABEL_STUDIO_URL="$url" LABEL_STUDIO_API_KEY="$key" \
    "$LSTR_SDK_PYTHON" sdk_flow.py "$@")
}
run_driver() { # LABEL_STUDIO_URL BACKEND_URL [args...]
  local url=$1 backend=$2
  shift 2
  env -i PATH=/usr/bin:/bin HOME="$WORK/home" LABEL_STUDIO_URL="$url" LABEL_STUDIO_API_KEY="$LEGACY_KEY" \
    ML_BACKEND_URL="$backend" "$LSTR_SDK_PYTHON" "$C/ml_backend/driver.py" "$@"
}

# ---- positive: through the header-injecting proxy ---------------------------------------------------------
expect sdk-token-via-proxy pass "d['downloads_verified'] >= 1 and w['auth_schemes_sent'].get('Token', 0) > 0" -- \
  run_sdk "$PROXY" "$LEGACY_KEY" --duration "$DURATION"
expect sdk-jwt-via-proxy pass "w['refresh_posts'] >= 1 and w['auth_schemes_sent'].get('Bearer', 0) > 0" -- \
  run_sdk "$PROXY" "$JWT_KEY" --duration "$DURATION" --min-refreshes 1
start_backend via-proxy "$PROXY"
expect ml-via-proxy pass "d['predictions_verified'] >= 1 and d['interactive_verified'] >= 1" -- \
  run_driver "$PROXY" "$BACKEND_URL" --duration "$DURATION"
# label_studio_ml.utils.get_image_local_path reads the host from LABEL_STUDIO_HOSTNAME (then HOSTNAME!).
start_backend utils-via-proxy "$PROXY" LSTR_ML_HELPER=utils LABEL_STUDIO_HOSTNAME="$PROXY"
expect ml-utils-helper-via-proxy pass "d['predictions_verified'] >= 1" -- run_driver "$PROXY" "$BACKEND_URL"

# ---- negative: no header injection (Label Studio directly, placeholder key) ------------------------------
expect sdk-token-direct fail "w['status_401'] > 0" -- run_sdk "$LS_URL" "$LEGACY_KEY"
expect sdk-jwt-direct fail "w['status_401'] > 0 and w['refresh_posts'] >= 1" -- run_sdk "$LS_URL" "$JWT_KEY"
# The backend talks to Label Studio directly with the placeholder (the driver still goes through the proxy).
start_backend direct "$LS_URL"
expect ml-backend-direct fail "any('ERROR' in str(c['prediction']) and '401' in str(c['prediction']) for c in d['checks'])" -- \
  run_driver "$PROXY" "$BACKEND_URL" --skip-interactive
# Evidence, not a proxy case: the base class's self.get_local_path uses what Label Studio sent in /setup
# (hostname http://localhost:<its port>, the creator's legacy token), so it bypasses LABEL_STUDIO_URL entirely.
start_backend base-helper "$PROXY" LSTR_ML_HELPER=base
expect ml-base-helper-bypasses-proxy fail "any('ERROR' in str(c['prediction']) and '401' in str(c['prediction']) for c in d['checks'])" -- \
  run_driver "$PROXY" "$BACKEND_URL" --skip-interactive

# ... and the stock way around it: init kwargs (`--with`) override what /setup sent (model.py:511).
start_backend base-helper-with-override "$PROXY" LSTR_ML_HELPER=base -- --with hostname="$PROXY" access_token="$LEGACY_KEY"
expect ml-base-helper-with-hostname-override pass "d['predictions_verified'] >= 1" -- run_driver "$PROXY" "$BACKEND_URL"

{
  echo "Label Studio 1.23.2 $LS_URL (JWT-only org: $ORG), nginx $LSTR_NGINX_VERSION $PROXY, duration ${DURATION}s"
  printf '%s\n' "${RESULTS[@]}"
} | tee "$OUT/RESULTS.txt"
grep -o '"GET /data/upload[^"]*" [0-9]*' "$OUT/nginx-access.log" | awk '{print $NF}' | sort | uniq -c |
  sed 's/^/nginx: GET \/data\/upload statuses: /' | tee -a "$OUT/RESULTS.txt"
echo "outputs: $OUT"
exit "$FAILED"
