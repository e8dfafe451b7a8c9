#!/usr/bin/env bash
# Provisions @bitnami/readme-generator-for-helm (npm), which writes the chart README's values reference from the
# `## @param` comments in values.yaml; cached per machine beside the other tools.
#
# Usage:  "$(bash tests/support/tools/readme-generator.sh)" --values VALUES --readme README
#         (prints the path of the readme-generator executable)
#
# Layout: ${LSTR_CACHE:-/var/tmp/ls-token-refresher}/tools/readme-generator-<version>/ (npm --prefix install, built
# in a temp dir beside it and renamed into place when complete). Idempotent and safe to run concurrently (flock).
# Needs node >= 18 and npm (Debian's nodejs/npm are installed if missing).
set -euo pipefail

# Pinned: the generated table's layout is part of the drift check, a new version may change it.
VERSION=2.7.2

CACHE=${LSTR_CACHE:-/var/tmp/ls-token-refresher}
TOOLS=$CACHE/tools
DIR=$TOOLS/readme-generator-$VERSION
BIN=$DIR/node_modules/.bin/readme-generator

log() { printf 'provision: %s\n' "$*" >&2; }
# shellcheck source=../apt.sh
source "$(dirname "${BASH_SOURCE[0]}")/../apt.sh"
# shellcheck source=../cache.sh
source "$(dirname "${BASH_SOURCE[0]}")/../cache.sh"

# shellcheck disable=SC2317  # both are called by provision_once
is_ready() { [ -f "$DIR/.complete" ]; }
finish() { printf '%s\n' "$BIN"; exit 0; }
provision_once "$TOOLS/.readme-generator.lock" is_ready finish

rm -rf "$TOOLS"/.tmp.readme-generator.* 2>/dev/null || true
command -v npm >/dev/null 2>&1 || ensure_pkgs nodejs npm
log "installing @bitnami/readme-generator-for-helm@$VERSION from npm (~20 s cold)"
t=$(cache_tmp "$TOOLS" readme-generator)
npm install --prefix "$t" --no-audit --no-fund --silent --ignore-scripts "@bitnami/readme-generator-for-helm@$VERSION" >&2
# npm's .bin links are relative, so the rename below keeps them working.
"$t/node_modules/.bin/readme-generator" --help >/dev/null
touch "$t/.complete"
rm -rf "$DIR"
mv "$t" "$DIR"
finish
