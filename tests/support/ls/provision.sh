#!/usr/bin/env bash
# Provision a cached, real Label Studio 1.23.2 for the integration tests.
#
# Provides, under ${LSTR_CACHE:-/var/tmp/ls-token-refresher}/ls-1.23.2/:
#   venv/      python3 venv with label-studio==1.23.2 (bin/label-studio, bin/python)
#   template/  a migrated data dir (SQLite) in which the test superuser and its organization exist
#   READY      marker written last; its presence means the whole cache is complete
#
# Fixed test credentials (local, throw-away servers on 127.0.0.1 only):
#   email:    admin@example.com
#   password: lstr-test-Passw0rd
#
# Idempotent and safe to run concurrently (flock on ls-1.23.2.lock). Each piece is built in a temp path
# next to its final place and renamed into place only when complete, so an interrupted run never leaves a
# half-built cache. A warm run only checks the marker and prints the paths (~instant).
# Label Studio is always run with a clean environment and --internal-host 127.0.0.1.
#
# Output (stdout, one per line): LS_VENV=…, LS_BIN=…, LS_PYTHON=…, LS_TEMPLATE=…, LS_EMAIL=…, LS_PASSWORD=…
set -euo pipefail

LS_VERSION=1.23.2
CACHE_ROOT="${LSTR_CACHE:-/var/tmp/ls-token-refresher}"
DIR="$CACHE_ROOT/ls-$LS_VERSION"
VENV="$DIR/venv"
TEMPLATE="$DIR/template"
READY="$DIR/READY"
LS_EMAIL="admin@example.com"
LS_PASSWORD="lstr-test-Passw0rd"
PYTHON="${LSTR_PYTHON:-python3}"

print_paths() {
  echo "LS_VENV=$VENV"
  echo "LS_BIN=$VENV/bin/label-studio"
  echo "LS_PYTHON=$VENV/bin/python"
  echo "LS_TEMPLATE=$TEMPLATE"
  echo "LS_EMAIL=$LS_EMAIL"
  echo "LS_PASSWORD=$LS_PASSWORD"
}

log() { echo "provision: $*" >&2; }

# READY is written last, after both renames.
is_ready() { [[ -f "$READY" && -x "$VENV/bin/label-studio" && -f "$TEMPLATE/label_studio.sqlite3" ]]; }
finish() { print_paths; exit 0; }

# shellcheck source=../cache.sh
source "$(dirname "${BASH_SOURCE[0]}")/../cache.sh"
provision_once "$DIR.lock" is_ready finish
mkdir -p "$DIR"
rm -f "$READY"

# --- venv -------------------------------------------------------------------------------------------
# A venv is not relocatable (absolute paths in its scripts), so it is built in a uniquely named directory
# that it keeps for life, and published by atomically renaming a symlink onto $VENV. Leftovers of
# interrupted builds (never linked) are removed under the lock.
if [[ ! -x "$VENV/bin/label-studio" ]]; then
  for d in "$DIR"/venv-*; do
    [[ -e "$d" && "$(readlink -f "$VENV" 2>/dev/null)" != "$(readlink -f "$d")" ]] && rm -rf "$d"
  done
  BUILD="$(mktemp -d "$DIR/venv-XXXXXX")"
  log "installing label-studio==$LS_VERSION into $BUILD (cold: ~80 s)"
  chmod 755 "$BUILD"
  "$PYTHON" -m venv "$BUILD"
  "$BUILD/bin/pip" install --disable-pip-version-check --no-input -q "label-studio==$LS_VERSION" >&2
  "$BUILD/bin/python" -c 'import label_studio, sys; assert label_studio.__version__ == sys.argv[1], label_studio.__version__' "$LS_VERSION"
  [[ -x "$BUILD/bin/label-studio" ]]
  ln -sfn "$(basename "$BUILD")" "$DIR/venv.link.tmp"
  mv -Tf "$DIR/venv.link.tmp" "$VENV"
fi

# --- template data dir ------------------------------------------------------------------------------
if [[ ! -f "$TEMPLATE/label_studio.sqlite3" ]]; then
  log "migrating a template data dir and creating $LS_EMAIL (cold: ~70 s)"
  rm -rf "$DIR"/template.tmp.*
  TMP="$(mktemp -d "$DIR/template.tmp.XXXXXX")"
  PORT="$("$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  HOME_DIR="$TMP/home"
  DATA="$TMP/data"
  mkdir -p "$HOME_DIR" "$DATA"
  # Same entry point as the `label-studio` script, plus a watchdog thread that exits the server if this
  # script dies (even by SIGKILL), so an interrupted run leaves no orphan server behind.
  LAUNCHER='
import os, sys, threading, time
_parent = os.getppid()
def _watch():
    while os.getppid() == _parent:
        time.sleep(0.5)
    os._exit(75)
threading.Thread(target=_watch, daemon=True).start()
sys.argv[0] = "label-studio"
from label_studio.server import main
sys.exit(main())
'
  env -i PATH="$VENV/bin:/usr/bin:/bin" HOME="$HOME_DIR" LANG=C.UTF-8 PYTHONUNBUFFERED=1 \
    LATEST_VERSION_CHECK=false SENTRY_DSN= FRONTEND_SENTRY_DSN= \
    LABEL_STUDIO_USERNAME="$LS_EMAIL" LABEL_STUDIO_PASSWORD="$LS_PASSWORD" \
    "$VENV/bin/python" -c "$LAUNCHER" start --no-browser --internal-host 127.0.0.1 --port "$PORT" --data-dir "$DATA" \
    >"$TMP/ls.log" 2>&1 &
  LS_PID=$!
  cleanup() { kill "$LS_PID" 2>/dev/null || true; rm -rf "$TMP"; }
  trap cleanup EXIT
  trap 'exit 130' INT TERM HUP
  ok=""
  for _ in $(seq 1 600); do
    if ! kill -0 "$LS_PID" 2>/dev/null; then break; fi
    if curl -fsS "http://127.0.0.1:$PORT/health" 2>/dev/null | grep -q UP; then ok=1; break; fi
    sleep 1
  done
  if [[ -z "$ok" ]]; then
    log "Label Studio did not come up on port $PORT; log tail:"
    tail -n 50 "$TMP/ls.log" >&2
    exit 1
  fi
  # Prove the user exists and can log in (session flow), so the template is known-good.
  JAR="$TMP/cookies"
  curl -fsS -c "$JAR" -b "$JAR" -o /dev/null "http://127.0.0.1:$PORT/user/login/"
  CSRF="$(awk '$6=="csrftoken"{print $7}' "$JAR" | tail -n1)"
  CODE="$(curl -sS -c "$JAR" -b "$JAR" -o /dev/null -w '%{http_code}' \
    -H "Referer: http://127.0.0.1:$PORT/user/login/" \
    --data-urlencode "email=$LS_EMAIL" --data-urlencode "password=$LS_PASSWORD" \
    --data-urlencode "csrfmiddlewaretoken=$CSRF" "http://127.0.0.1:$PORT/user/login/")"
  [[ "$CODE" == 302 ]] || { log "login check failed: HTTP $CODE"; tail -n 30 "$TMP/ls.log" >&2; exit 1; }
  curl -fsS -b "$JAR" "http://127.0.0.1:$PORT/api/current-user/whoami" | grep -q "$LS_EMAIL" \
    || { log "whoami check failed"; exit 1; }
  # The port must really be ours (Label Studio silently moves to the next port if it is busy).
  grep -q "Starting development server at http://127.0.0.1:$PORT/" "$TMP/ls.log" \
    || { log "Label Studio did not bind port $PORT; log tail:"; tail -n 30 "$TMP/ls.log" >&2; exit 1; }
  kill "$LS_PID"
  for _ in $(seq 1 50); do kill -0 "$LS_PID" 2>/dev/null || break; sleep 0.2; done
  kill -9 "$LS_PID" 2>/dev/null || true
  wait "$LS_PID" 2>/dev/null || true
  trap - EXIT INT TERM HUP
  # Only the data dir goes into the cache; drop per-run leftovers that must not be shared. The secret key
  # (.env) is removed: every copy gets its own hex key before its first start (label_studio.rs PREPARE_DB,
  # lib.sh ls_start), so PATs of one test server are invalid on another.
  rm -f "$DATA/.env"
  rm -rf "$TEMPLATE"
  mv "$DATA" "$TEMPLATE"
  rm -rf "$TMP"
fi

touch "$READY"
log "ready"
print_paths
