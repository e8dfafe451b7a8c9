# Shell helpers to run a throw-away Label Studio 1.23.2 on 127.0.0.1 (for the demo and the benchmarks;
# the Rust tests use tests/e2e/src/label_studio.rs). Source it after running provision.sh.
#   ls_start DIR TTL_SECONDS [NAME=VALUE...] -> sets LS_PID, LS_PORT, LS_URL; data dir and log under DIR; the
#                              optional NAME=VALUE pairs are added to the server's (otherwise clean) environment,
#                              e.g. ML_BLOCK_LOCAL_IP=false to let it reach an ML backend on 127.0.0.1;
#                              LS_WANT_PORT=N in the caller's environment picks the port (default: a free one)
#   ls_stop                    -> stops it by PID
#   ls_login / ls_create_pat / ls_legacy_token / ls_set_org_tokens API LEGACY
# Credentials are the fixed local test ones from provision.sh.

LS_LIB_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LS_CACHE_DIR="${LSTR_CACHE:-/var/tmp/ls-token-refresher}/ls-1.23.2"
LS_EMAIL="admin@example.com"
LS_PASSWORD="lstr-test-Passw0rd"

ls_free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

ls_start() {
  local dir="$1" ttl="${2:-300}"
  shift 2 || shift $#
  mkdir -p "$dir/home"
  rm -rf "$dir/data"
  cp -a "$LS_CACHE_DIR/template" "$dir/data"
  # Own signing key, hex: Label Studio's generated one starts with '$' one time in 50, and then
  # django-environ reads it back as '' and a new key is made on every start (PATs die on restart).
  (umask 077 && printf 'SECRET_KEY=%s\n' "$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')" >"$dir/data/.env")
  LS_PORT="${LS_WANT_PORT:-$(ls_free_port)}"
  env -i PATH="$LS_CACHE_DIR/venv/bin:/usr/bin:/bin" HOME="$dir/home" LANG=C.UTF-8 \
    LATEST_VERSION_CHECK=false SENTRY_DSN= FRONTEND_SENTRY_DSN= \
    LOG_LEVEL=INFO PYTHONPATH="$LS_LIB_DIR" DJANGO_SETTINGS_MODULE=test_settings LSTR_TEST_ACCESS_TTL_SECONDS="$ttl" \
    "$@" \
    "$LS_CACHE_DIR/venv/bin/label-studio" start --no-browser --internal-host 127.0.0.1 \
    --port "$LS_PORT" --data-dir "$dir/data" >"$dir/label-studio.log" 2>&1 &
  LS_PID=$!
  LS_URL="http://127.0.0.1:$LS_PORT"
  LS_DIR="$dir"
  for _ in $(seq 1 180); do
    if ! kill -0 "$LS_PID" 2>/dev/null; then
      echo "Label Studio exited; log tail:" >&2; tail -n 30 "$dir/label-studio.log" >&2; return 1
    fi
    if curl -fsS "$LS_URL/health" 2>/dev/null | grep -q UP; then return 0; fi
    sleep 0.5
  done
  echo "Label Studio did not answer on $LS_URL; log tail:" >&2; tail -n 30 "$dir/label-studio.log" >&2
  return 1
}

ls_stop() {
  [[ -n "${LS_PID:-}" ]] || return 0
  kill "$LS_PID" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$LS_PID" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$LS_PID" 2>/dev/null || true
  wait "$LS_PID" 2>/dev/null || true
  LS_PID=""
}

ls_login() {
  LS_JAR="$LS_DIR/cookies"
  curl -fsS -c "$LS_JAR" -b "$LS_JAR" -o /dev/null "$LS_URL/user/login/"
  local csrf
  csrf="$(awk '$6=="csrftoken"{print $7}' "$LS_JAR" | tail -n1)"
  curl -sS -c "$LS_JAR" -b "$LS_JAR" -o /dev/null -H "Referer: $LS_URL/user/login/" \
    --data-urlencode "email=$LS_EMAIL" --data-urlencode "password=$LS_PASSWORD" \
    --data-urlencode "csrfmiddlewaretoken=$csrf" "$LS_URL/user/login/"
}

# Prints a new PAT (JWT refresh token) for the test user.
ls_create_pat() {
  ls_login
  curl -fsS -b "$LS_JAR" -X POST "$LS_URL/api/token/" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])'
}

# Prints the user's legacy (40-hex) token.
ls_legacy_token() {
  ls_login
  curl -fsS -b "$LS_JAR" "$LS_URL/api/current-user/token" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])'
}

# ls_set_org_tokens true|false true|false
ls_set_org_tokens() {
  ls_login
  curl -fsS -b "$LS_JAR" -H 'Content-Type: application/json' -o /dev/null -X POST "$LS_URL/api/jwt/settings" \
    -d "{\"api_tokens_enabled\": $1, \"legacy_api_tokens_enabled\": $2}"
}
