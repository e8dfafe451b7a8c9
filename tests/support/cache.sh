#!/usr/bin/env bash
# Cache helpers shared by the provisioning scripts (source it after defining `log`). Each script builds into its
# own directory under $LSTR_CACHE behind one lock file; several scripts, and several runs of one, may run at once.
#   provision_once LOCKFILE IS_READY FINISH
#                        runs FINISH (which prints what the caller wants and exits) if IS_READY succeeds: at once,
#                        without the lock (every script publishes its ready marker last), or after waiting for
#                        another run holding LOCKFILE. Otherwise returns holding LOCKFILE's lock on fd 9 until the
#                        script exits, so the caller builds alone.
#   cache_tmp DIR NAME   a fresh DIR/.tmp.NAME.XXXXXX (mode 0755) beside the final directory (same filesystem, so
#                        the final rename is atomic); `rm -rf DIR/.tmp.*` under the lock removes a killed run's.

provision_once() {
    local lock=$1 ready=$2 finish=$3
    if "$ready"; then "$finish"; fi
    mkdir -p "$(dirname "$lock")"
    exec 9>"$lock"
    if ! flock -n 9; then
        log "another provisioning run holds $lock; waiting"
        flock 9
    fi
    # Another run may have finished while we waited.
    if "$ready"; then "$finish"; fi
}

cache_tmp() {
    local t
    t=$(mktemp -d "$1/.tmp.$2.XXXXXX")
    chmod 0755 "$t"
    printf '%s\n' "$t"
}
