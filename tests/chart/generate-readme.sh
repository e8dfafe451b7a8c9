#!/usr/bin/env bash
# Writes the "Parameters" section of charts/ls-token-refresher/README.md from the `## @param` comments in the chart's
# values.yaml, with @bitnami/readme-generator-for-helm (provisioned by tests/support/tools/readme-generator.sh).
#
#   tests/chart/generate-readme.sh            rewrite the README in place
#   tests/chart/generate-readme.sh --check    fail (exit 1, with a diff) if the README differs from a fresh run;
#                                             also fails when a value has no @param or a @param no value
#
# The generator replaces the "### <section>" tables under "## Parameters" (the README's last section) and keeps
# the text above them.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
chart=$root/charts/ls-token-refresher
mode="write"
case "${1:-}" in
  --check) mode=check ;;
  "") ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

gen=$(bash "$root/tests/support/tools/readme-generator.sh")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$chart/README.md" "$work/README.md"
# The generator prints its own progress; only its errors (missing or stray @param) matter.
if ! out=$("$gen" --values "$chart/values.yaml" --readme "$work/README.md" 2>&1); then
  printf '%s\n' "$out" | grep -E 'ERROR|Error' >&2 || printf '%s\n' "$out" >&2
  exit 1
fi
case $mode in
  write)
    cp "$work/README.md" "$chart/README.md"
    echo "charts/ls-token-refresher/README.md: Parameters regenerated"
    ;;
  check)
    diff -u "$chart/README.md" "$work/README.md" \
      --label "README.md (committed)" --label "README.md (regenerated)" || {
      echo "the chart README's Parameters are out of date: run tests/chart/generate-readme.sh" >&2
      exit 1
    }
    ;;
esac
