#!/usr/bin/env bash
# Turns the checked-out commit into the artifacts a user installs, in dist/ (or --out DIR):
#
#   deploy/release.sh VERSION [--out DIR]      e.g. deploy/release.sh 0.1.0
#   deploy/release.sh --check VERSION          only the version agreement check
#
#   ls-token-refresher-VERSION-<host triple>         the release binary (Cargo.toml's [profile.release])
#   ls-token-refresher-image-VERSION.tar             the OCI image (an OCI layout that is also a `docker save`
#                                                    archive) tagged ghcr.io/ls-token-refresher/ls-token-refresher:VERSION,
#                                                    built from that binary by deploy/image/build.sh
#   ls-token-refresher-VERSION.tgz                   the packaged chart (deploy/package-chart.sh; `helm push` it)
#   ls-token-refresher-VERSION.cdx.json              CycloneDX 1.5 SBOM of the binary's crates (cargo-cyclonedx;
#                                                    normal dependencies for the host target, no dev/build deps)
#   RELEASE-NOTES.md                                 CHANGELOG.md's section for VERSION
#   SHA256SUMS                                       `sha256sum -c SHA256SUMS` in dist/
#
# Refuses to run (exit 1, nothing built) unless Cargo.toml, Cargo.lock, Chart.yaml version/appVersion, the chart's
# default image tag, deploy/*.yaml and CHANGELOG.md's top entry all say VERSION (deploy/check-versions.py), or when
# the work tree has uncommitted changes to tracked files (the artifacts would not be the commit's).
#
# Reproducible: the same commit gives byte-identical artifacts from any clone path and checkout time. The compiler
# embeds source paths (panic locations, file!()); every one is remapped — the clone (REPO), CARGO_HOME, the target
# dir and the rustup toolchain — with --remap-path-prefix, and C code built by cc (ring) gets the same through
# -ffile-prefix-map. SOURCE_DATE_EPOCH is the commit's time. The image assembly (mkimage.py) and the chart package
# already take no time or path from the machine. What stays machine-specific: the toolchain version and the
# Debian shared objects copied into the image (pinned by the build machine, as with any distroless build).
# tests/release/check.sh builds one commit from two clones and compares SHA256SUMS.
#
# Environment: CARGO_TARGET_DIR (default REPO/target), LSTR_CACHE (the cached helm and cargo-cyclonedx, provisioned
# on demand by tests/support/tools/provision.sh and tests/support/release/provision.sh).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
log() { printf '[release] %s\n' "$*" >&2; }
usage() { sed -n '2,6p' "$0" >&2; exit 2; }

check_only=0
OUT=""
VERSION=""
while (($#)); do
    case "$1" in
    --check) check_only=1; shift ;;
    --out) OUT="$2"; shift 2 ;;
    -*) usage ;;
    *) [[ -z "$VERSION" ]] || usage; VERSION="$1"; shift ;;
    esac
done
[[ -n "$VERSION" ]] || usage
OUT="${OUT:-$REPO/dist}"

# Tools: helm + PyYAML (chart tools), cargo-cyclonedx (release tools). Both cached; ~0 s when warm.
# shellcheck disable=SC1090
source "$(bash "$REPO/tests/support/tools/provision.sh" --env-file)"

log "checking that every version names $VERSION"
if ! "$LSTR_TOOLS_PYTHON" "$HERE/check-versions.py" "$VERSION" --repo "$REPO"; then
    log "refusing to release $VERSION: the versions above disagree"
    exit 1
fi
((check_only)) && { log "versions agree"; exit 0; }

if [[ -n "$(git -C "$REPO" status --porcelain --untracked-files=no)" ]]; then
    git -C "$REPO" status --short --untracked-files=no >&2
    log "refusing to release from a work tree with uncommitted changes (the artifacts would not be the commit's)"
    exit 1
fi

# shellcheck disable=SC1090
source "$(bash "$REPO/tests/support/release/provision.sh" --env-file)"

COMMIT=$(git -C "$REPO" rev-parse HEAD)
export SOURCE_DATE_EPOCH
SOURCE_DATE_EPOCH=$(git -C "$REPO" log -1 --format=%ct)
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target}"
CARGO_HOME_DIR="${CARGO_HOME:-$HOME/.cargo}"
SYSROOT=$(rustc --print sysroot)
HOST=$(rustc -vV | sed -n 's/^host: //p')
mkdir -p "$TARGET_DIR"
TARGET_DIR=$(cd "$TARGET_DIR" && pwd -P)

# rustc applies the LAST matching --remap-path-prefix, so the most specific prefixes come last (the target dir may
# lie inside the clone). The fixed right-hand sides are what a panic location shows.
remaps=(
    "$(cd "$CARGO_HOME_DIR" && pwd -P)=/cargo"
    "$SYSROOT=/rustc-sysroot"
    "$(cd "$REPO" && pwd -P)=/src"
    "$TARGET_DIR=/target"
)
[[ "$REPO" != "$(cd "$REPO" && pwd -P)" ]] && remaps+=("$REPO=/src")
rustflags=()
cflags=()
for r in "${remaps[@]}"; do
    rustflags+=("--remap-path-prefix=$r")
    cflags+=("-ffile-prefix-map=$r")
done
# CARGO_ENCODED_RUSTFLAGS (0x1f-separated) keeps paths with spaces intact.
CARGO_ENCODED_RUSTFLAGS=$(IFS=$'\x1f'; printf '%s' "${rustflags[*]}")
export CARGO_ENCODED_RUSTFLAGS
unset RUSTFLAGS
export CFLAGS="${cflags[*]}"
export CARGO_TARGET_DIR="$TARGET_DIR"

# dist/ is emptied first, so that SHA256SUMS covers exactly this release; a directory holding anything else is not
# ours to empty (a mistyped --out must not delete a work tree).
if [[ -d "$OUT" && -n "$(ls -A "$OUT")" && ! -f "$OUT/SHA256SUMS" ]]; then
    log "refusing to empty $OUT: it is not empty and holds no SHA256SUMS of an earlier release"
    exit 1
fi
rm -rf "$OUT"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
log "commit $COMMIT (SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH), target dir $TARGET_DIR"
log "cargo build --release --locked --bin ls-token-refresher (~4 min cold on 2 cores: opt-level 3, fat LTO)"
(cd "$REPO" && cargo build --release --locked --bin ls-token-refresher >&2)
BIN_NAME="ls-token-refresher-$VERSION-$HOST"
install -m 0755 "$TARGET_DIR/release/ls-token-refresher" "$OUT/$BIN_NAME"
built=$("$OUT/$BIN_NAME" --version)
[[ "$built" == *" $VERSION" ]] || { log "the binary says '$built', not $VERSION"; exit 1; }

log "image"
bash "$HERE/image/build.sh" --binary "$OUT/$BIN_NAME" --out "$OUT/ls-token-refresher-image-$VERSION.tar" >/dev/null

log "chart"
chart=$(bash "$HERE/package-chart.sh" "$OUT")
[[ "$chart" == "$OUT/ls-token-refresher-$VERSION.tgz" ]] || { log "helm package wrote $chart"; exit 1; }

log "SBOM (cargo-cyclonedx)"
sbom_tmp=$(mktemp -d)
trap 'rm -rf "$sbom_tmp"' EXIT
# cargo-cyclonedx writes beside each manifest; run it on a copy of the manifests so the clone stays clean.
(cd "$REPO" && git archive --format=tar HEAD Cargo.toml Cargo.lock src tests/e2e/Cargo.toml tests/e2e/src) \
    | tar -x -C "$sbom_tmp"
(cd "$sbom_tmp" && "$CARGO_CYCLONEDX" cyclonedx --format json --spec-version 1.5 --no-build-deps \
    --target "$HOST" --override-filename sbom --manifest-path "$sbom_tmp/Cargo.toml" >&2)
"$LSTR_TOOLS_PYTHON" "$HERE/normalize-sbom.py" "$sbom_tmp/sbom.json" "$sbom_tmp" "$COMMIT" \
    >"$OUT/ls-token-refresher-$VERSION.cdx.json"

log "release notes"
awk -v v="$VERSION" '
    /^## \[/ { if (on) exit; if (index($0, "## [" v "]") == 1) { on = 1; print; next } }
    on' "$REPO/CHANGELOG.md" >"$OUT/RELEASE-NOTES.md"
[[ -s "$OUT/RELEASE-NOTES.md" ]] || { log "no section for $VERSION in CHANGELOG.md"; exit 1; }

sums=$(cd "$OUT" && find . -maxdepth 1 -type f -printf '%f\n' | LC_ALL=C sort | xargs sha256sum)
printf '%s\n' "$sums" >"$OUT/SHA256SUMS"
log "dist: $OUT"
cat "$OUT/SHA256SUMS" >&2
echo "$OUT"
