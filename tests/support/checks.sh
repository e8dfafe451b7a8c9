# shellcheck shell=bash
# The check vocabulary of the suite's shell check scripts (tests/chart/check.sh, tests/release/check.sh): each
# check prints one `ok`/`FAIL` line (a failure with the tail of its output), and `checks_summary NAME` prints the
# closing "NAME: N passed, M failed" line that tests/run-all.sh adds up, returning non-zero if anything failed.
# Sourced, not run.

passed=0
failed=0
ok() { passed=$((passed + 1)); printf 'ok   %s\n' "$1"; }
# bad NAME [OUTPUT]: a failure, with the last 60 lines of OUTPUT.
bad() {
  failed=$((failed + 1))
  printf 'FAIL %s\n' "$1"
  [ -n "${2:-}" ] && printf '%s\n' "$2" | tail -n 60 | sed 's/^/     | /'
}
# check NAME CMD...: passes when CMD exits 0; shows CMD's output when it fails.
check() {
  local name=$1 out
  shift
  if out=$("$@" 2>&1); then ok "$name"; else bad "$name" "$out"; fi
}
checks_summary() {
  echo "$1: $passed passed, $failed failed"
  [ "$failed" -eq 0 ]
}
