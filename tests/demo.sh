#!/usr/bin/env bash
# Demo against a real, local Label Studio 1.23.2 (installed from PyPI on first use, cached under
# /var/tmp/ls-token-refresher): mints a PAT, diagnoses it with `check`, runs the refresher for
# DEMO_SECONDS (default 45) with 20-second access tokens so several refreshes are visible, proves each
# published token works against the real API, shows the metrics, and stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
export LSTR_CACHE="${LSTR_CACHE:-/var/tmp/ls-token-refresher}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$LSTR_CACHE/target}"
DEMO_SECONDS="${DEMO_SECONDS:-45}"

echo "==> installing Label Studio 1.23.2 (cached after the first run)"
bash tests/support/ls/provision.sh >/dev/null
echo "==> building ls-token-refresher"
cargo build --quiet
BIN="$CARGO_TARGET_DIR/debug/ls-token-refresher"

# shellcheck source=support/ls/lib.sh
source tests/support/ls/lib.sh
WORK="$(mktemp -d /tmp/lstr-demo.XXXXXX)"
REFRESHER_PID=""
cleanup() {
  [[ -n "$REFRESHER_PID" ]] && kill "$REFRESHER_PID" 2>/dev/null && wait "$REFRESHER_PID" 2>/dev/null
  ls_stop
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "==> starting Label Studio on 127.0.0.1 with 20 s access tokens"
ls_start "$WORK/ls" 20
echo "    $LS_URL (pid $LS_PID)"
ls_create_pat >"$WORK/pat"
chmod 600 "$WORK/pat"
echo "    minted a Personal Access Token into $WORK/pat (never printed)"

echo "==> ls-token-refresher check"
"$BIN" check --url "$LS_URL" --pat-file "$WORK/pat"

echo "==> ls-token-refresher run for ${DEMO_SECONDS}s (token dir $WORK/tokens)"
mkdir -p "$WORK/tokens"
PORT="$(ls_free_port)"
"$BIN" run --url "$LS_URL" --pat-file "$WORK/pat" --token-dir "$WORK/tokens" --min-lead 5s \
  --admin-addr "127.0.0.1:$PORT" 2> >(sed 's/^/    [refresher] /' >&2) &
REFRESHER_PID=$!
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break
  sleep 0.2
done

last=""
end=$((SECONDS + DEMO_SECONDS))
while ((SECONDS < end)); do
  exp="$(cat "$WORK/tokens/expires_at" 2>/dev/null || true)"
  if [[ -n "$exp" && "$exp" != "$last" ]]; then
    code="$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: $(cat "$WORK/tokens/authorization")" \
      "$LS_URL/api/current-user/whoami")"
    echo "    consumer: new token, expires_at=$exp, GET /api/current-user/whoami -> HTTP $code"
    last="$exp"
  fi
  sleep 0.5
done

echo "==> metrics (excerpt)"
curl -fsS "http://127.0.0.1:$PORT/metrics" | grep -E '^ls_token_refresher_(refresh_total\{|token_valid |token_expiration_timestamp_seconds |next_refresh_timestamp_seconds )'
echo "==> readiness: $(curl -fsS "http://127.0.0.1:$PORT/readyz")"
echo "==> SIGTERM"
kill -TERM "$REFRESHER_PID"
wait "$REFRESHER_PID" && echo "    exited 0; files left in place:" && ls "$WORK/tokens"
REFRESHER_PID=""
echo "demo finished"
