#!/usr/bin/env bash
# Packages charts/ls-token-refresher with `helm package`, reproducibly: the same commit gives the same .tgz bytes
# from any clone, at any path, checked out at any time.
#
#   deploy/package-chart.sh OUTDIR
#
# Prints the package's path (OUTDIR/ls-token-refresher-<Chart.yaml version>.tgz) on stdout. The package is a plain
# `helm package` result: `helm install NAME FILE.tgz`, `helm push FILE.tgz oci://REGISTRY/NAMESPACE`.
# deploy/release.sh and the pod test on the kubelet node (tests/e2e/src/chart.rs, `package`) both call this, so
# the chart the tests install is the chart the release ships.
#
# Why a copy with fixed mtimes and modes: helm 4 writes each file's mtime and mode into the archive, and a git
# checkout sets mtimes to the checkout time and modes from the umask. The copy gets SOURCE_DATE_EPOCH (default:
# the commit time of HEAD) as every mtime and 0644 as every mode; helm's gzip header carries no time.
# helm: $HELM, else the one tests/support/tools/provision.sh provisions (cached), else `helm` on PATH.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
CHART=$REPO/charts/ls-token-refresher

(($# == 1)) || { sed -n '2,10p' "$0" >&2; exit 2; }
OUT=$1

if [[ -z "${HELM:-}" ]]; then
    if env_file=$(bash "$REPO/tests/support/tools/provision.sh" --env-file 2>/dev/null); then
        # shellcheck disable=SC1090
        source "$env_file"
    else
        HELM=$(command -v helm) || { echo "package-chart: no helm (set HELM or run tests/support/tools/provision.sh)" >&2; exit 1; }
    fi
fi

EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$REPO" log -1 --format=%ct)}
[[ "$EPOCH" =~ ^[0-9]+$ ]] || { echo "package-chart: SOURCE_DATE_EPOCH must be Unix seconds, got '$EPOCH'" >&2; exit 2; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -R "$CHART" "$work/ls-token-refresher"
find "$work/ls-token-refresher" -type d -exec chmod 0755 {} + -o -type f -exec chmod 0644 {} +
find "$work/ls-token-refresher" -exec touch -h -d "@$EPOCH" {} +

mkdir -p "$OUT"
msg=$("$HELM" package "$work/ls-token-refresher" --destination "$OUT")
# "Successfully packaged chart and saved it to: /path/x.tgz"
printf '%s\n' "${msg##*: }"
