#!/usr/bin/env bash
# Provisions a real kube-apiserver (v1.20.2, built from Debian bookworm's source package), the node
# components built from the same tree (kubelet, kube-controller-manager, kube-scheduler) and etcd 3.4
# (Debian's etcd-server, unpacked, not installed as a service) into
#   ${LSTR_CACHE:-/var/tmp/ls-token-refresher}/kube/bin/{kube-apiserver,kubelet,kube-controller-manager,kube-scheduler,etcd}
# See shared/docs/local-kubernetes.md for why it is done this way; tests/support/node/ runs the node.
#
# Idempotent and safe to run concurrently (flock). A warm run only checks the stamps and exits (~ms).
# Cold, all four Go binaries are compiled by ONE `make` (the packages they share compile once), static
# (CGO_ENABLED=0), stripped, with -trimpath; the source tree and Go caches are removed afterwards.
# Measured on 2 cores: see tests/support/node/README.md (~1.5-2.5 GB disk while building).
#
# Two stamps, so that a cache made by the older apiserver-only recipe stays valid for it:
#   bin/.recipe       kube-apiserver + etcd (+ kubectl when the machine has none)
#   bin/.recipe-node  kubelet + kube-controller-manager + kube-scheduler
# A machine holding only the apiserver builds just the three node binaries.
# Prints the bin directory on stdout; progress goes to stderr.
set -euo pipefail

K8S_SRC_VERSION="1.20.5+really1.20.2-1.1+deb12u1"
REFLECT2_VERSION="1.0.2-2"
JSONITER_VERSION="1.1.12-1"
# Bump when the recipe changes so caches built by an older recipe are rebuilt.
RECIPE="k8s=${K8S_SRC_VERSION};reflect2=${REFLECT2_VERSION};jsoniter=${JSONITER_VERSION};etcd=debian-bookworm;r1"
NODE_RECIPE="k8s=${K8S_SRC_VERSION};reflect2=${REFLECT2_VERSION};jsoniter=${JSONITER_VERSION};cgo=0;node-r1"
NODE_BINS=(kubelet kube-controller-manager kube-scheduler)

CACHE="${LSTR_CACHE:-/var/tmp/ls-token-refresher}/kube"
BIN="$CACHE/bin"
STAMP="$BIN/.recipe"
NODE_STAMP="$BIN/.recipe-node"

log() { printf '[kube-provision] %s\n' "$*" >&2; }

recipe_ok() { [[ -f "$STAMP" && "$(cat "$STAMP")" == "$RECIPE" ]]; }
node_recipe_ok() { [[ -f "$NODE_STAMP" && "$(cat "$NODE_STAMP")" == "$NODE_RECIPE" ]]; }
node_bins_ok() {
    local b
    node_recipe_ok || return 1
    for b in "${NODE_BINS[@]}"; do [[ -x "$BIN/$b" ]] || return 1; done
}
# The harness runs /usr/bin/kubectl (or any kubectl on PATH); only without one do we cache Debian's.
have_kubectl() { command -v kubectl >/dev/null 2>&1 || [[ -x "$BIN/kubectl" ]]; }
is_ready() {
    recipe_ok && [[ -x "$BIN/kube-apiserver" && -x "$BIN/etcd" ]] && have_kubectl && node_bins_ok &&
        command -v openssl >/dev/null 2>&1
}

finish() { echo "$BIN"; exit 0; }

# shellcheck source=../cache.sh
source "$(dirname "${BASH_SOURCE[0]}")/../cache.sh"
provision_once "$CACHE/.lock" is_ready finish
# Leftovers of an interrupted run (we hold the lock, so nobody else is using them).
rm -rf "$CACHE"/work.*
if ! recipe_ok; then
    rm -f "$BIN/kube-apiserver" "$BIN/etcd" "$BIN/kubectl" "$STAMP"
fi
if ! node_recipe_ok; then
    rm -f "${NODE_BINS[@]/#/$BIN/}" "$NODE_STAMP"
fi
mkdir -p "$BIN"

# shellcheck source=../apt.sh
source "$(dirname "${BASH_SOURCE[0]}")/../apt.sh"

WORK="$(mktemp -d "$CACHE/work.XXXXXX")"
cleanup() { chmod -R u+w "$WORK" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

# Installs $1 (a file in $WORK) as $BIN/$2, atomically.
install_bin() {
    cp "$1" "$BIN/.$2.tmp"
    chmod 755 "$BIN/.$2.tmp"
    mv -f "$BIN/.$2.tmp" "$BIN/$2"
}

# openssl makes the per-instance PKI at test time.
command -v openssl >/dev/null 2>&1 || ensure_pkgs openssl

# ---------------------------------------------------------------- etcd
if [[ ! -x "$BIN/etcd" ]]; then
    log "fetching etcd-server"
    mkdir -p "$WORK/etcd"
    apt_download "$WORK/etcd" etcd-server
    dpkg-deb -x "$WORK"/etcd/etcd-server_*.deb "$WORK/etcd/root"
    "$WORK/etcd/root/usr/bin/etcd" --version >&2
    install_bin "$WORK/etcd/root/usr/bin/etcd" etcd
fi

# ---------------------------------------------------------------- kubectl (only if the machine has none)
if ! have_kubectl; then
    log "no kubectl on PATH: caching Debian's kubernetes-client"
    mkdir -p "$WORK/kubectl"
    apt_download "$WORK/kubectl" kubernetes-client
    dpkg-deb -x "$WORK"/kubectl/kubernetes-client_*.deb "$WORK/kubectl/root"
    install_bin "$WORK/kubectl/root/usr/bin/kubectl" kubectl
fi

# ---------------------------------------------------------------- kube-apiserver + node binaries
# build_k8s CMD... : one `make WHAT="cmd/a cmd/b ..."` over the patched Debian source tree.
build_k8s() {
    ensure_pkgs golang-1.19-go make rsync dpkg-dev xz-utils patch ca-certificates
    log "fetching kubernetes source $K8S_SRC_VERSION (private apt config with deb-src; /etc/apt untouched)"
    APTDIR="$WORK/apt"
    mkdir -p "$APTDIR/lists/partial" "$APTDIR/src"
    KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
    printf 'deb-src [signed-by=%s] http://deb.debian.org/%s main\n' \
        "$KEYRING" "debian bookworm" "$KEYRING" "debian bookworm-updates" \
        "$KEYRING" "debian-security bookworm-security" >"$APTDIR/sources.list"
    SRC_APT=(-o "Dir::Etc::sourcelist=$APTDIR/sources.list" -o "Dir::Etc::sourceparts=$APTDIR/none"
        -o "Dir::State::Lists=$APTDIR/lists" -o "Dir::Cache::archives=$APTDIR/archives")
    mkdir -p "$APTDIR/none" "$APTDIR/archives/partial"
    apt-get "${APT_OPTS[@]}" "${SRC_APT[@]}" update >&2
    (cd "$APTDIR/src" && apt-get "${APT_OPTS[@]}" "${SRC_APT[@]}" source --download-only "kubernetes=$K8S_SRC_VERSION" >&2)
    log "unpacking source"
    (cd "$APTDIR/src" && dpkg-source -x ./kubernetes_*.dsc "$WORK/k8s" >&2)
    rm -rf "$APTDIR/src"

    log "replacing vendored reflect2/json-iterator with Debian's 1.0.2/1.1.12 (Go >= 1.18 fix)"
    mkdir -p "$WORK/debs"
    apt_download "$WORK/debs" "golang-github-modern-go-reflect2-dev=$REFLECT2_VERSION" \
        "golang-github-json-iterator-go-dev=$JSONITER_VERSION"
    for deb in "$WORK"/debs/*.deb; do dpkg-deb -x "$deb" "$WORK/debs/root"; done
    GOCODE="$WORK/debs/root/usr/share/gocode/src"
    for pkg in github.com/modern-go/reflect2 github.com/json-iterator/go; do
        [[ -d "$GOCODE/$pkg" && -d "$WORK/k8s/vendor/$pkg" ]] || { log "missing $pkg"; exit 1; }
        rsync -a --delete --exclude '*_test.go' --exclude 'test/' --exclude 'go.mod' --exclude 'go.sum' \
            "$GOCODE/$pkg/" "$WORK/k8s/vendor/$pkg/"
    done
    # (Kubernetes 1.20's build runs in GOPATH mode, GO111MODULE=off: vendor/modules.txt is not checked.)

    local what=() c
    for c in "$@"; do what+=("cmd/$c"); done
    log "building ${what[*]} (one make; several minutes)"
    export PATH="/usr/lib/go-1.19/bin:$PATH"
    export GOPATH="$WORK/gopath" GOCACHE="$WORK/gocache" GOFLAGS="" GOPROXY=off GOTOOLCHAIN=local
    export KUBE_GIT_VERSION="v1.20.2" KUBE_GIT_TREE_STATE=clean
    # Static everywhere (the kubelet would otherwise link glibc through cgo): no C toolchain in the way,
    # and the kubelet built like this has run pods here. Kubernetes' build already strips (-s -w) and
    # trims paths (-trimpath in gcflags/asmflags).
    export CGO_ENABLED=0
    local t0=$SECONDS
    (cd "$WORK/k8s" && make WHAT="${what[*]}" >&2)
    log "make took $((SECONDS - t0)) s"
    for c in "$@"; do
        "$WORK/k8s/_output/bin/$c" --version >&2
    done
    for c in "$@"; do
        install_bin "$WORK/k8s/_output/bin/$c" "$c"
    done
}

to_build=()
[[ -x "$BIN/kube-apiserver" ]] || to_build+=(kube-apiserver)
node_bins_ok || to_build+=("${NODE_BINS[@]}")
if ((${#to_build[@]})); then
    build_k8s "${to_build[@]}"
fi

# Everything is in place: record the recipes last.
echo "$RECIPE" >"$STAMP.tmp"
mv -f "$STAMP.tmp" "$STAMP"
echo "$NODE_RECIPE" >"$NODE_STAMP.tmp"
mv -f "$NODE_STAMP.tmp" "$NODE_STAMP"
log "ready: $BIN"
echo "$BIN"
