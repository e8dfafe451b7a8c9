#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs and caches what it needs under
# /var/tmp/ls-token-refresher (Label Studio 1.23.2 from PyPI, kube-apiserver + kubelet + controller-manager +
# scheduler built from Debian's sources, etcd, containerd/runc, helm/kubectl/promtool/kubernetes-validate/checkov, libfaketime),
# then runs lints (whole workspace), the root crate's fast tests, the tests/e2e crate's tests against the real
# Label Studio, kube-apiserver, Prometheus (fault injection included) and a real kubelet + containerd node
# (the chart and deploy/ as pods, our image built without Docker), the chart checks, and the release checks (two
# reproducible release builds from two clones, version agreement, actionlint, cargo-deny).
# Measured on 2 cores: warm 22 min 30 s (2026-12-07), ~7 of them the pod tests (real token lifetimes and the
# kubelet's real 60 s Secret sync, overlapping on one node) and ~4 the release checks; cold 23 min 19 s
# (2026-11-30, before the release checks; empty cache, apt packages already installed, 4 min 37 s provisioning),
# which two cold release builds and the release tools' installs lengthen by an estimated 10 min.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
export LSTR_CACHE="${LSTR_CACHE:-/var/tmp/ls-token-refresher}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$LSTR_CACHE/target}"
export CARGO_TERM_COLOR=never
# The whole suite runs here: a test that cannot (no root, no CAP_SYS_TIME) fails, never skips.
unset LSTR_ALLOW_SKIP
mkdir -p "$LSTR_CACHE"
LOGS="$(mktemp -d /tmp/lstr-run-all.XXXXXX)"
trap 'rm -rf "$LOGS"' EXIT
failures=()
step() { echo; echo "==> $*"; }

step "provisioning (cached): Label Studio, kube-apiserver + etcd, chart tools, libfaketime, release tools"
t0=$SECONDS
pids=()
bash tests/support/ls/provision.sh >"$LOGS/ls.log" 2>&1 & pids+=("$!:ls")
bash tests/support/kube/provision.sh >"$LOGS/kube.log" 2>&1 & pids+=("$!:kube")
bash tests/support/tools/provision.sh >"$LOGS/tools.log" 2>&1 & pids+=("$!:tools")
bash tests/support/node/provision.sh >"$LOGS/node.log" 2>&1 & pids+=("$!:node")
bash tests/support/faketime/provision.sh >"$LOGS/faketime.log" 2>&1 & pids+=("$!:faketime")
bash tests/support/release/provision.sh >"$LOGS/release.log" 2>&1 & pids+=("$!:release")
for entry in "${pids[@]}"; do
  pid="${entry%%:*}"; name="${entry##*:}"
  if ! wait "$pid"; then
    echo "provisioning $name FAILED; log tail:"; tail -n 40 "$LOGS/$name.log"
    echo "run-all: 0 passed, 1 failed"
    exit 1
  fi
done
echo "provisioned in $((SECONDS - t0))s"

step "cargo fmt --all --check"
cargo fmt --all --check || failures+=("fmt")

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings || failures+=("clippy")

# Two layers (see README, Development): the root crate's unit, property and wiremock tests, then the
# workspace member tests/e2e against the real components, which runs the real binary.
step "cargo test (root crate: unit, property, wiremock)"
cargo test --no-fail-fast 2>&1 | tee "$LOGS/cargo-test.log"
[[ "${PIPESTATUS[0]}" == 0 ]] || failures+=("cargo test")

step "cargo test -p ls-token-refresher-e2e (real Label Studio, kube-apiserver, Prometheus, faults, pods on a kubelet)"
# The binary under test, built as the e2e crate's refresher::binary() builds it (so it is fresh and
# a build error shows here, not inside a test).
cargo build --quiet -p ls-token-refresher -p ls-token-refresher-e2e --bin ls-token-refresher 2>&1 \
  | tee -a "$LOGS/cargo-test.log"
[[ "${PIPESTATUS[0]}" == 0 ]] || failures+=("cargo build")
# Each end-to-end test starts its own Label Studio / apiserver; four at a time fit 2 cores.
cargo test -p ls-token-refresher-e2e --no-fail-fast -- --test-threads="${LSTR_TEST_THREADS:-4}" 2>&1 \
  | tee -a "$LOGS/cargo-test.log"
[[ "${PIPESTATUS[0]}" == 0 ]] || failures+=("cargo test -p ls-token-refresher-e2e")
passed=$(grep -Eo '^test result: .* ([0-9]+) passed' "$LOGS/cargo-test.log" | grep -Eo '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '^test result: .*; ([0-9]+) failed' "$LOGS/cargo-test.log" | grep -Eo '[0-9]+ failed' | awk '{s+=$1} END {print s+0}')

step "chart, manifests and Prometheus rules"
bash tests/chart/check.sh 2>&1 | tee "$LOGS/chart.log"
[[ "${PIPESTATUS[0]}" == 0 ]] || failures+=("chart checks")
cpassed=$(grep -Eo '^chart-checks: [0-9]+ passed' "$LOGS/chart.log" | grep -Eo '[0-9]+' | head -1)
cfailed=$(grep -Eo '^chart-checks: [0-9]+ passed, [0-9]+ failed' "$LOGS/chart.log" | grep -Eo '[0-9]+ failed' | grep -Eo '[0-9]+')

step "release: reproducible artifacts from two clones, version agreement, workflows (actionlint), cargo-deny"
bash tests/release/check.sh 2>&1 | tee "$LOGS/release-checks.log"
[[ "${PIPESTATUS[0]}" == 0 ]] || failures+=("release checks")
rpassed=$(grep -Eo '^release-checks: [0-9]+ passed' "$LOGS/release-checks.log" | grep -Eo '[0-9]+' | head -1)
rfailed=$(grep -Eo '^release-checks: [0-9]+ passed, [0-9]+ failed' "$LOGS/release-checks.log" | grep -Eo '[0-9]+ failed' | grep -Eo '[0-9]+')
[[ -n "$rpassed" ]] || rfailed=1 # it died before its closing line

echo
echo "==> summary"
grep -E '^test result:' "$LOGS/cargo-test.log" || true
grep -E '^chart-checks:' "$LOGS/chart.log" || true
grep -E '^release-checks:' "$LOGS/release-checks.log" || true
lint_failed=0
for f in "${failures[@]:-}"; do
  [[ "$f" == fmt || "$f" == clippy || "$f" == "cargo build" ]] && lint_failed=$((lint_failed + 1))
done
total_passed=$((passed + ${cpassed:-0} + ${rpassed:-0}))
total_failed=$((failed + ${cfailed:-0} + ${rfailed:-0} + lint_failed))
if ((${#failures[@]})); then echo "failed steps: ${failures[*]}"; fi
echo "run-all: ${total_passed} passed, ${total_failed} failed"
((${#failures[@]} == 0))
