#!/usr/bin/env bash
# Provisions the container runtime side of the test node (tests/support/node/node.sh), cached per machine:
#   $NODE/bin/{containerd,containerd-shim-runc-v2,ctr,runc}   Debian bookworm's containerd 1.6.20 + runc 1.1.5,
#                                                            unpacked with dpkg-deb (no system service, /etc untouched)
#   $NODE/cni/{loopback,bridge,host-local,portmap}          Debian's containernetworking-plugins 1.1.1
#   $NODE/images/pause.tar     lstr.local/pause:1.0     the CRI sandbox image (tests/support/node/pause.c, static)
#   $NODE/images/busybox.tar   lstr.local/busybox:1.35  busybox-static 1.35 as /bin/busybox + /bin/sh, wget, cat …
# with NODE = ${LSTR_CACHE:-/var/tmp/ls-token-refresher}/node. The images are single-layer tarballs made by
# deploy/image/mkimage.py (OCI layout + docker-archive in one file, reproducible digests).
# The Kubernetes binaries (kubelet, kube-controller-manager, kube-scheduler, kube-apiserver, etcd) come from
# tests/support/kube/provision.sh; node.sh runs both scripts.
#
# Idempotent, safe to run concurrently (flock on $NODE/.lock); a warm run only checks the stamp (~ms).
# Cold: ~10-20 s (three .debs, ~36 MB, and a C compile). Prints KEY=VALUE lines on stdout.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../../.." && pwd)"
# Bump when the recipe changes.
RECIPE="containerd=1.6.20;runc=1.1.5;cni=1.1.1;busybox=1.35;pause=$(sha256sum "$HERE/pause.c" | cut -c1-12);mkimage=$(sha256sum "$REPO/deploy/image/mkimage.py" | cut -c1-12);r1"
PAUSE_IMAGE="lstr.local/pause:1.0"
BUSYBOX_IMAGE="lstr.local/busybox:1.35"

NODE="${LSTR_CACHE:-/var/tmp/ls-token-refresher}/node"
STAMP="$NODE/.recipe"

log() { printf '[node-provision] %s\n' "$*" >&2; }

print_env() {
    cat <<EOF
NODE_CACHE=$NODE
NODE_BIN=$NODE/bin
NODE_CNI_BIN=$NODE/cni
PAUSE_IMAGE=$PAUSE_IMAGE
PAUSE_TAR=$NODE/images/pause.tar
BUSYBOX_IMAGE=$BUSYBOX_IMAGE
BUSYBOX_TAR=$NODE/images/busybox.tar
EOF
}

is_ready() {
    [[ -f "$STAMP" && "$(cat "$STAMP")" == "$RECIPE" ]] || return 1
    local f
    for f in bin/containerd bin/containerd-shim-runc-v2 bin/ctr bin/runc cni/loopback; do
        [[ -x "$NODE/$f" ]] || return 1
    done
    [[ -f "$NODE/images/pause.tar" && -f "$NODE/images/busybox.tar" ]] || return 1
    # runc links libseccomp.so.2: gone if someone removed the package.
    "$NODE/bin/runc" --version >/dev/null 2>&1
}

finish() { print_env; exit 0; }

# shellcheck source=../cache.sh
source "$HERE/../cache.sh"
provision_once "$NODE/.lock" is_ready finish
t0=$SECONDS
rm -rf "$NODE"/work.* "$STAMP"
WORK="$(mktemp -d "$NODE/work.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

# shellcheck source=../apt.sh
source "$(dirname "${BASH_SOURCE[0]}")/../apt.sh"

# libseccomp2: runc's only library besides glibc. gcc + libc6-dev: the static pause binary.
# mount/umount (util-linux) and python3 are on every Debian image the suite runs on.
ensure_pkgs libseccomp2 gcc libc6-dev
command -v python3 >/dev/null || ensure_pkgs python3

log "fetching containerd, runc, containernetworking-plugins, busybox-static (Debian bookworm)"
mkdir -p "$WORK/debs" "$WORK/root"
apt_download "$WORK/debs" containerd runc containernetworking-plugins busybox-static
for deb in "$WORK"/debs/*.deb; do dpkg-deb -x "$deb" "$WORK/root"; done
R="$WORK/root"

mkdir -p "$WORK/out/bin" "$WORK/out/cni" "$WORK/out/images"
install -m 0755 "$R/usr/bin/containerd" "$R/usr/bin/containerd-shim-runc-v2" "$R/usr/bin/ctr" "$R/usr/sbin/runc" \
    "$WORK/out/bin/"
for p in loopback bridge host-local portmap; do install -m 0755 "$R/usr/lib/cni/$p" "$WORK/out/cni/"; done
"$WORK/out/bin/containerd" --version >&2
"$WORK/out/bin/runc" --version >&2

log "building images"
cc -Os -static -s -Wall -o "$WORK/pause" "$HERE/pause.c"
"$WORK/pause" -v >&2
python3 "$REPO/deploy/image/mkimage.py" --out "$WORK/out/images/pause.tar" --tag "$PAUSE_IMAGE" \
    --file "$WORK/pause:/pause:0755" --entrypoint '["/pause"]' \
    --label org.opencontainers.image.description="pod sandbox for the ls-token-refresher test node" >&2
# busybox: /bin/sh and every applet through busybox itself ("busybox wget …"), plus symlinks for the common
# ones so that plain `sh -c 'cat …; wget …'` works. /tmp for tools that want it.
bb_links=()
for a in sh cat wget ls sleep echo env id stat test printf date grep sed head tail tr wc true false kill ps \
    mkdir rm cp mv touch chmod readlink realpath timeout nc; do
    bb_links+=(--symlink "/bin/$a:busybox")
done
python3 "$REPO/deploy/image/mkimage.py" --out "$WORK/out/images/busybox.tar" --tag "$BUSYBOX_IMAGE" \
    --file "$R/bin/busybox:/bin/busybox:0755" "${bb_links[@]}" --dir /tmp:1777 \
    --cmd '["sh"]' >&2

rm -rf "${NODE:?}/bin" "${NODE:?}/cni" "${NODE:?}/images"
mv "$WORK/out/bin" "$WORK/out/cni" "$WORK/out/images" "$NODE/"
echo "$RECIPE" >"$STAMP.tmp"
mv -f "$STAMP.tmp" "$STAMP"
log "ready in $((SECONDS - t0)) s: $NODE"
print_env
