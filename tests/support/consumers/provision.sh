#!/usr/bin/env bash
# Provisions the stock Label Studio clients and the reference proxy the consumer proof and the proxy benchmark
# run, cached per machine:
#   - a venv with label-studio-sdk 2.1.2 (requirements-sdk.txt, fully pinned)
#   - a SEPARATE venv with the ML backend server label-studio-ml 1.0.9 (requirements-ml.txt, fully pinned;
#     see the comment there for the two undeclared imports it needs)
#   - Debian's nginx-light (the `nginx` binary it depends on) and wrk, unpacked with `apt-get download` +
#     `dpkg-deb -x` (not installed: no service is started, nothing outside the cache is touched)
#
# Usage:  bash tests/support/consumers/provision.sh          # prints env.sh (KEY=VALUE exports)
#         source "$(bash tests/support/consumers/provision.sh --env-file)"
#
# Layout (CONS = ${LSTR_CACHE:-/var/tmp/ls-token-refresher}/consumers):
#   $CONS/sdk-<hash>/ $CONS/ml-<hash>/   venvs, <hash> = first 12 hex of the requirements file's sha256; each is
#                                        built in a temp dir beside it and renamed into place when complete.
#                                        Use only their bin/python (a renamed venv's bin/* shebangs are stale).
#   $CONS/nginx-<debver>/ $CONS/wrk-<debver>/   unpacked .debs (root/usr/...)
#   $CONS/bin/{nginx,wrk}                stable entry points (wrk needs the unpacked libluajit: a wrapper sets
#                                        LD_LIBRARY_PATH)
#   $CONS/env.sh                         exports LSTR_SDK_PYTHON LSTR_ML_PYTHON LSTR_NGINX LSTR_WRK
#                                        LSTR_NGINX_VERSION LSTR_WRK_VERSION LSTR_CONSUMERS
# Idempotent and safe to run concurrently (flock); a warm run only checks the stamp in env.sh.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE=${LSTR_CACHE:-/var/tmp/ls-token-refresher}
CONS=$CACHE/consumers
ENV_FILE=$CONS/env.sh
SDK_REQ=$HERE/requirements-sdk.txt
ML_REQ=$HERE/requirements-ml.txt
# Debian bookworm: nginx-light 1.22.1 (a metapackage over `nginx`), wrk 4.1.0. Point releases move the Debian
# revision: take apt's candidate, check the upstream version.
NGINX_UPSTREAM=1.22.1
WRK_UPSTREAM=4.1.0

sha12() { sha256sum "$1" | cut -c1-12; }
SDK_HASH=$(sha12 "$SDK_REQ")
ML_HASH=$(sha12 "$ML_REQ")
STAMP="v1 sdk=$SDK_HASH ml=$ML_HASH nginx=$NGINX_UPSTREAM wrk=$WRK_UPSTREAM"

want_env_file_only=0
[ "${1:-}" = "--env-file" ] && want_env_file_only=1

log() { printf 'provision(consumers): %s\n' "$*" >&2; }

finish() {
  if [ "$want_env_file_only" = 1 ]; then
    printf '%s\n' "$ENV_FILE"
  else
    cat "$ENV_FILE"
  fi
  exit 0
}

# env.sh is renamed into place last, so its stamp line means everything is there.
is_ready() { [ -f "$ENV_FILE" ] && [ "$(sed -n 2p "$ENV_FILE")" = "# stamp: $STAMP" ]; }

# shellcheck source=../cache.sh
source "$HERE/../cache.sh"
provision_once "$CONS/.lock" is_ready finish

PY=${LSTR_PYTHON:-$(command -v python3)}

# Leftovers of a killed run are removed under the lock; nobody else can be using them.
rm -rf "$CONS"/.tmp.* 2>/dev/null || true

# ---- venvs ------------------------------------------------------------------------------------------------
# build_venv NAME REQ CHECK_PY -> $CONS/NAME-<hash>
build_venv() {
  local name=$1 req=$2 check=$3 hash dir t
  hash=$(sha12 "$req")
  dir=$CONS/$name-$hash
  if [ -f "$dir/.complete" ]; then return 0; fi
  log "building $name venv from $(basename "$req")"
  t=$(cache_tmp "$CONS" "$name")
  "$PY" -m venv "$t"
  "$t/bin/python" -m pip install --quiet --disable-pip-version-check --no-input -r "$req" >&2
  "$t/bin/python" -c "$check"
  touch "$t/.complete"
  rm -rf "$dir"
  mv "$t" "$dir"
  # After the rename only bin/python is used (it finds the venv through pyvenv.cfg beside it).
  "$dir/bin/python" -c "$check"
}
build_venv sdk "$SDK_REQ" '
import importlib.metadata as m, label_studio_sdk, httpx, jwt
assert m.version("label-studio-sdk") == "2.1.2", m.version("label-studio-sdk")
from label_studio_sdk.client import LabelStudio
from label_studio_sdk._extensions.label_studio_tools.core.utils.io import get_local_path
'
build_venv ml "$ML_REQ" '
import importlib.metadata as m
assert m.version("label-studio-ml") == "1.0.9", m.version("label-studio-ml")
import label_studio_ml.api, label_studio_ml.model
from label_studio_tools.core.utils.io import get_local_path
'
SDK_DIR=$CONS/sdk-$SDK_HASH
ML_DIR=$CONS/ml-$ML_HASH

# ---- Debian packages, unpacked ----------------------------------------------------------------------------
# shellcheck source=../apt.sh
source "$(dirname "${BASH_SOURCE[0]}")/../apt.sh"
candidate() { apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}'; }

# check_ldd BIN [LIBDIR] : every shared library resolves
check_ldd() {
  local out
  out=$(LD_LIBRARY_PATH=${2:-} ldd "$1")
  if grep -q 'not found' <<<"$out"; then
    log "unresolved libraries for $1:"
    grep 'not found' <<<"$out" >&2
    return 1
  fi
}

NGINX_VER=$(candidate nginx-light)
if [ -z "$NGINX_VER" ] || [ "$NGINX_VER" = "(none)" ]; then
  apt_update 2>/dev/null
  NGINX_VER=$(candidate nginx-light)
fi
case "$NGINX_VER" in
  "$NGINX_UPSTREAM"-*) ;;
  *) log "unexpected nginx-light candidate: '$NGINX_VER' (wanted $NGINX_UPSTREAM-*)"; exit 1 ;;
esac
NGINX_DIR=$CONS/nginx-$NGINX_VER
if [ ! -f "$NGINX_DIR/.complete" ]; then
  log "fetching nginx-light $NGINX_VER (and the nginx binary package it depends on)"
  t=$(cache_tmp "$CONS" nginx)
  # nginx-light in bookworm is a metapackage: Depends: nginx (= same version), libnginx-mod-http-echo.
  apt_download "$t" "nginx-light=$NGINX_VER" "nginx=$NGINX_VER"
  for deb in "$t"/*.deb; do dpkg-deb -x "$deb" "$t/root"; done
  rm -f "$t"/*.deb
  check_ldd "$t/root/usr/sbin/nginx"
  v=$("$t/root/usr/sbin/nginx" -v 2>&1)
  case "$v" in
    *"nginx/$NGINX_UPSTREAM"*) ;;
    *) log "unexpected nginx version: $v"; exit 1 ;;
  esac
  touch "$t/.complete"
  rm -rf "$NGINX_DIR"
  mv "$t" "$NGINX_DIR"
fi

WRK_VER=$(candidate wrk)
case "$WRK_VER" in
  "$WRK_UPSTREAM"-*) ;;
  *) log "unexpected wrk candidate: '$WRK_VER' (wanted $WRK_UPSTREAM-*)"; exit 1 ;;
esac
WRK_DIR=$CONS/wrk-$WRK_VER
if [ ! -f "$WRK_DIR/.complete" ]; then
  log "fetching wrk $WRK_VER and libluajit-5.1-2"
  t=$(cache_tmp "$CONS" wrk)
  apt_download "$t" "wrk=$WRK_VER" libluajit-5.1-2
  for deb in "$t"/*.deb; do dpkg-deb -x "$deb" "$t/root"; done
  rm -f "$t"/*.deb
  lib=$(find "$t/root" -name 'libluajit-5.1.so.2*' -printf '%h\n' | head -n1)
  [ -n "$lib" ] || { log "libluajit-5.1.so.2 not found in the unpacked packages"; exit 1; }
  printf '%s\n' "${lib#"$t/"}" >"$t/libdir"
  check_ldd "$t/root/usr/bin/wrk" "$lib"
  touch "$t/.complete"
  rm -rf "$WRK_DIR"
  mv "$t" "$WRK_DIR"
fi

# ---- stable entry points + env.sh -------------------------------------------------------------------------
t=$(cache_tmp "$CONS" bin)
cat >"$t/nginx" <<EOF
#!/bin/sh
# Debian's nginx $NGINX_VER, unpacked. Always pass -p PREFIX -c CONF -e ERRLOG: the compiled-in paths are
# /etc/nginx and /var/log/nginx (see bench/proxy/README.md).
exec "$NGINX_DIR/root/usr/sbin/nginx" "\$@"
EOF
cat >"$t/wrk" <<EOF
#!/bin/sh
# Debian's wrk $WRK_VER, unpacked, with its libluajit.
LD_LIBRARY_PATH="$WRK_DIR/$(cat "$WRK_DIR/libdir")\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$WRK_DIR/root/usr/bin/wrk" "\$@"
EOF
chmod 0755 "$t/nginx" "$t/wrk"
"$t/nginx" -v 2>/dev/null
"$t/wrk" -v >/dev/null 2>&1 || [ $? -eq 1 ]  # wrk -v prints its version and exits 1
rm -rf "$CONS/bin.old"
[ -d "$CONS/bin" ] && mv "$CONS/bin" "$CONS/bin.old"
mv "$t" "$CONS/bin"
rm -rf "$CONS/bin.old"

cat >"$ENV_FILE.tmp" <<EOF
# generated by tests/support/consumers/provision.sh — source me
# stamp: $STAMP
export LSTR_CONSUMERS="$CONS"
export LSTR_SDK_PYTHON="$SDK_DIR/bin/python"
export LSTR_ML_PYTHON="$ML_DIR/bin/python"
export LSTR_NGINX="$CONS/bin/nginx"
export LSTR_WRK="$CONS/bin/wrk"
export LSTR_NGINX_VERSION="$NGINX_VER"
export LSTR_WRK_VERSION="$WRK_VER"
EOF
mv "$ENV_FILE.tmp" "$ENV_FILE"
# Builds for other requirement hashes or Debian revisions are left in place (a process that read an older
# env.sh may still be using them); remove $CONS to reclaim the space.
log "ready under $CONS"
finish
