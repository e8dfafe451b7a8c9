#!/usr/bin/env bash
# Builds the ls-token-refresher container image WITHOUT a container engine or registry: the offline
# equivalent of the repository's Dockerfile (which needs Docker and gcr.io/distroless/cc-debian12:nonroot).
#
#   deploy/image/build.sh [--binary PATH] [--out FILE] [--tag REF]
#
#   --binary  use this release binary instead of running `cargo build --release --locked --bin ls-token-refresher`
#   --out     output tarball (default: $CARGO_TARGET_DIR or ./target, then image/ls-token-refresher-<version>.tar)
#   --tag     image reference (default ghcr.io/ls-token-refresher/ls-token-refresher:<Cargo.toml version>,
#             the name deploy/ and the chart use, so imported images match them with imagePullPolicy IfNotPresent)
#
# The result is one tar that is both an OCI image layout and a `docker save` archive:
#   ctr -n k8s.io images import FILE  |  docker load -i FILE  |  podman load -i FILE  |  skopeo copy oci-archive:FILE …
# Prints the tarball path on stdout.
#
# What goes in (one layer, reproducible: root-owned, mtime 0, sorted), mirroring distroless/cc-debian12:nonroot:
#   /usr/local/bin/ls-token-refresher           the release binary (COPY in the Dockerfile)
#   the glibc dynamic loader and the shared objects the binary needs (from `ldd`: libc, libgcc_s, libm …),
#   taken from the build machine's Debian 12 so they match what the binary was linked against
#   /etc/ssl/certs/ca-certificates.crt          Debian's ca-certificates bundle (rustls-native-certs reads it)
#   /etc/passwd, /etc/group                     root, nobody and nonroot (65532), as in distroless
#   /etc/nsswitch.conf                          "hosts: files dns" (glibc's resolver order), as in distroless
#   /tmp (1777), /home/nonroot (0700, 65532)
# No shell, no package manager, no tzdata (the binary logs in UTC and never reads /usr/share/zoneinfo).
# Config (kept equal to the Dockerfile by deploy/image/check.py): USER 65532:65532, EXPOSE 9417,
# ENTRYPOINT ["/usr/local/bin/ls-token-refresher"], CMD ["run"], the Dockerfile's LABELs.
#
# Why dynamic glibc and not a static binary: the Rust toolchain here has only x86_64-unknown-linux-gnu (no
# musl), and a static glibc binary (crt-static) would be a different build from the Dockerfile's and from the
# one the tests run, with glibc's warning that getaddrinfo in static binaries needs the same glibc at run
# time anyway. Shipping the loader + the few .so files is exactly what distroless/cc does.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' "$REPO/Cargo.toml" | head -n1)"
BINARY=""
TAG="ghcr.io/ls-token-refresher/ls-token-refresher:$VERSION"
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target}"
OUT="$TARGET_DIR/image/ls-token-refresher-$VERSION.tar"

while (($#)); do
    case "$1" in
    --binary) BINARY="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --tag) TAG="$2"; shift 2 ;;
    *) sed -n '2,16p' "$0" >&2; exit 2 ;;
    esac
done

log() { printf '[image] %s\n' "$*" >&2; }

if [[ -z "$BINARY" ]]; then
    log "cargo build --release --locked --bin ls-token-refresher"
    (cd "$REPO" && cargo build --release --locked --bin ls-token-refresher >&2)
    BINARY="$TARGET_DIR/release/ls-token-refresher"
fi
[[ -x "$BINARY" ]] || { log "no binary at $BINARY"; exit 1; }

CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
if [[ ! -s "$CA_BUNDLE" ]]; then
    log "installing Debian's ca-certificates"
    DEBIAN_FRONTEND=noninteractive apt-get -q install -y --no-install-recommends ca-certificates >&2
fi

args=(--file "$BINARY:/usr/local/bin/ls-token-refresher:0755")
# Shared objects: every "name => /path" line of ldd, plus the loader (the line without "=>").
while read -r line; do
    case "$line" in
    *"=> not found"*) log "ldd: $line"; exit 1 ;;
    *"=> /"*) path="${line#*=> }"; path="${path%% (*}" ;;
    /*) path="${line%% (*}" ;;
    *) continue ;; # linux-vdso.so.1
    esac
    args+=(--file "$(readlink -f "$path"):$path:0755")
done < <(ldd "$BINARY")

args+=(
    --file "$(readlink -f "$CA_BUNDLE"):/etc/ssl/certs/ca-certificates.crt:0644"
    --text "/etc/passwd:0644:root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"
    --text "/etc/group:0644:root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n"
    --text "/etc/nsswitch.conf:0644:passwd: files\ngroup: files\nhosts: files dns\n"
    --dir /tmp:1777
    --dir /home/nonroot:0700:65532:65532
)

# Image config from the Dockerfile itself (USER, EXPOSE, ENTRYPOINT, CMD, LABEL), so the two cannot drift.
config_args=()
eval "$(python3 "$HERE/check.py" --dockerfile "$REPO/Dockerfile" --print-mkimage-args)"
((${#config_args[@]})) || { log "could not read the image config from the Dockerfile"; exit 1; }

mkdir -p "$(dirname "$OUT")"
SOURCE_DATE_EPOCH=0 python3 "$HERE/mkimage.py" --out "$OUT" --tag "$TAG" "${args[@]}" "${config_args[@]}" >&2
log "built $TAG -> $OUT ($(du -h "$OUT" | cut -f1))"
echo "$OUT"
