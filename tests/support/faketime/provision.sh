#!/usr/bin/env bash
# Provisions libfaketime (Debian's package libfaketime, unpacked into the cache, not installed) for the
# clock-skew tests: they run the real binary with LD_PRELOAD of it and FAKETIME="+30s" etc.
#
# Usage:  bash tests/support/faketime/provision.sh     # prints the path of libfaketime.so.1
#
# Layout: ${LSTR_CACHE:-/var/tmp/ls-token-refresher}/faketime-<upstream>/libfaketime.so.1, built in a
# temp dir beside it and renamed into place when complete. Idempotent and safe to run concurrently
# (flock); a warm run only checks that the library is there.
set -euo pipefail

# Debian bookworm ships 0.9.10 (its revision moves with point releases: take the candidate).
UPSTREAM=0.9.10
CACHE=${LSTR_CACHE:-/var/tmp/ls-token-refresher}
DIR=$CACHE/faketime-$UPSTREAM
LIB=$DIR/libfaketime.so.1

log() { printf 'provision: %s\n' "$*" >&2; }
# shellcheck source=../apt.sh
source "$(dirname "${BASH_SOURCE[0]}")/../apt.sh"

is_ready() { [ -f "$LIB" ]; }
finish() { printf '%s\n' "$LIB"; exit 0; }

# shellcheck source=../cache.sh
source "$(dirname "${BASH_SOURCE[0]}")/../cache.sh"
provision_once "$CACHE/faketime.lock" is_ready finish

t=$(cache_tmp "$CACHE" faketime)
trap 'rm -rf "$t"' EXIT
log "fetching libfaketime (Debian package libfaketime, upstream $UPSTREAM)"
apt_download "$t" libfaketime
case "$(ls "$t"/libfaketime_*.deb)" in
  *"libfaketime_$UPSTREAM-"*) ;;
  *) log "unexpected libfaketime version: $(ls "$t"/libfaketime_*.deb) (wanted $UPSTREAM)"; exit 1 ;;
esac
dpkg-deb -x "$t"/libfaketime_*.deb "$t/x"
mkdir -p "$t/out"
install -m 0644 "$t"/x/usr/lib/*/faketime/libfaketime.so.1 "$t/out/libfaketime.so.1"
# Smoke test: a faked `date` is a day ahead of the real one.
real=$(date +%s)
faked=$(LD_PRELOAD="$t/out/libfaketime.so.1" FAKETIME="+1d" date +%s)
if [ $((faked - real)) -lt 86000 ]; then
  log "libfaketime does not take effect here (date: real $real, faked $faked)"
  exit 1
fi
rm -rf "$DIR"
mv "$t/out" "$DIR"
log "libfaketime ready: $LIB"
printf '%s\n' "$LIB"
