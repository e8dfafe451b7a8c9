#!/usr/bin/env bash
# Debian package helpers shared by the provisioning scripts (source it after defining `log`).
#   apt_update                 one `apt-get update` per script run (unreachable third-party lists don't fail it)
#   ensure_pkgs PKG...         installs the named packages that are missing
#   apt_download DIR PKG...    `apt-get download` into DIR, retried once after an update (stale or missing lists
#                              on a fresh machine); packages fetched this way are unpacked, never installed
# Several provisioning scripts run in parallel: dpkg's lock is waited for, not failed on.
export DEBIAN_FRONTEND=noninteractive
APT_OPTS=(-o DPkg::Lock::Timeout=900 -o APT::Sandbox::User=root -q)
APT_SUDO=()
if [[ $(id -u) -ne 0 ]]; then APT_SUDO=(sudo); fi
apt_updated=0

apt_update() {
    if [[ $apt_updated -eq 0 ]]; then
        log "apt-get update"
        "${APT_SUDO[@]}" apt-get "${APT_OPTS[@]}" update >&2 || log "apt-get update reported errors (continuing)"
        apt_updated=1
    fi
}

ensure_pkgs() {
    local need=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
    done
    if ((${#need[@]})); then
        apt_update
        log "apt-get install ${need[*]}"
        "${APT_SUDO[@]}" apt-get "${APT_OPTS[@]}" install -y --no-install-recommends "${need[@]}" >&2
    fi
}

apt_download() {
    local dir="$1"
    shift
    if ! (cd "$dir" && apt-get "${APT_OPTS[@]}" download "$@" >&2); then
        apt_update
        (cd "$dir" && apt-get "${APT_OPTS[@]}" download "$@" >&2)
    fi
}
