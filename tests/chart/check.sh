#!/usr/bin/env bash
# Offline checks of the Helm chart, the plain manifests in deploy/, the Dockerfile and the alerting rules.
#
#   bash tests/chart/check.sh
#
# Tools come from tests/support/tools/provision.sh (cached; ~2 min the first time on a machine, ~0 s after).
# Ends with the line "chart-checks: N passed, M failed" and exits non-zero if anything failed.
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
chart=$root/charts/ls-token-refresher
deploy=$root/deploy

# The newest Kubernetes whose schemas kubernetes-validate ships, and the first whose API has native sidecars
# (alpha in 1.28, on by default from 1.29).
K8S_NEWEST=1.37.0
K8S_SIDECARS=1.28.0
# The oldest it ships: the manifests that do not need native sidecars must validate there too.
K8S_OLDEST=1.25.0

# shellcheck source=../support/checks.sh
source "$(dirname "${BASH_SOURCE[0]}")/../support/checks.sh"
finish() {
  checks_summary chart-checks
  exit $?
}

if ! env_file=$(bash "$root/tests/support/tools/provision.sh" --env-file); then
  bad "provision tools (tests/support/tools/provision.sh)"
  finish
fi
# shellcheck disable=SC1090
source "$env_file"
PY=$LSTR_TOOLS_PYTHON   # the tools venv's python (has PyYAML)

work=$(mktemp -d)
bg_pids=()
# shellcheck disable=SC2317  # runs from the EXIT trap
cleanup() {
  for p in "${bg_pids[@]}"; do kill "$p" 2>/dev/null; done
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/rendered" "$work/deploy" "$work/rules" "$work/checkov"

# ---- checkov skips (apply to the rendered chart, deploy/ and the Dockerfile alike) -------------------------------
skips=(
  # CKV_K8S_43 "Image should use digest": no image has been published yet, so there is no digest to pin. The chart
  # takes image.digest (see values/full.yaml) and deploy/ users should pin @sha256 once an image is released.
  CKV_K8S_43
  # CKV_K8S_15 "Image Pull Policy should be Always": checkov accepts IfNotPresent only with a digest (above). With
  # immutable version tags IfNotPresent is right for a credential sidecar: Always would make every pod start (and
  # so the app's start, gated on the sidecar) depend on the registry being reachable.
  CKV_K8S_15
  # CKV_DOCKER_2 "HEALTHCHECK": Kubernetes ignores Docker's HEALTHCHECK; the probes use /livez and /readyz, and the
  # distroless image has no shell or curl to run one.
  CKV_DOCKER_2
)
# Only for the rendered chart (not deploy/, whose workloads all ship a NetworkPolicy):
chart_skips=(
  # CKV2_K8S_6 "pods without a NetworkPolicy": the chart's NetworkPolicy is opt-in (networkPolicy.enabled)
  # because the API server's address is cluster-specific; the value sets full and https-ca-secret render it and
  # the assertions below check what it allows.
  CKV2_K8S_6
)
# The chart's Deployment also carries checkov.io/skip1 for CKV_K8S_38 (ServiceAccount token mounted): it is the
# one pod that needs the API. See templates/deployment.yaml.
join() { local IFS=,; echo "$*"; }
run_checkov() { # run_checkov OUT SKIPS ARGS...: runs in the background, result read by collect_checkov
  local out=$1 skip=$2
  shift 2
  ( "$CHECKOV" --quiet --compact --skip-download --skip-check "$skip" "$@" >"$out.log" 2>&1; echo $? >"$out.rc" ) &
  bg_pids+=($!)
  echo $! >"$out.pid"
}
collect_checkov() { # collect_checkov NAME OUT
  local name=$1 out=$2
  wait "$(cat "$out.pid")" 2>/dev/null
  local rc
  rc=$(cat "$out.rc" 2>/dev/null || echo 99)
  local summary
  summary=$(grep -E 'Passed checks: [0-9]+, Failed checks: [0-9]+' "$out.log" | tr '\n' ' ')
  if [ "$rc" = 0 ] && [ -n "$summary" ] && ! grep -qE 'Failed checks: [1-9]' "$out.log"; then
    ok "$name ($summary)"
  else
    bad "$name (exit $rc)" "$(cat "$out.log")"
  fi
}

# ---- helm lint + render every value set -------------------------------------------------------------------------
for values in "$here"/values/*.yaml; do
  set_name=$(basename "$values" .yaml)
  check "helm lint --strict ($set_name)" "$HELM" lint --strict "$chart" -f "$values" --namespace label-studio
  if out=$("$HELM" template ls-token-refresher "$chart" --namespace label-studio -f "$values" 2>&1); then
    printf '%s\n' "$out" >"$work/rendered/$set_name.yaml"
    ok "helm template ($set_name)"
  else
    bad "helm template ($set_name)" "$out"
  fi
done

# ---- the conventions, rendered with the values a user would pass on the command line ----------------------------------
# Each case: its name | helm template arguments (split on spaces). The renders join the value sets above, so they also
# go through kubernetes-validate, checkov and assertions.py (which checks each convention by its case name).
url=--set=labelStudio.url=http://label-studio.label-studio.svc:8080
conventions=(
  "set-pull-secrets|$url --set=imagePullSecrets[0].name=regcred --set=global.imagePullSecrets[0].name=shared-regcred"
  "legacy-pull-secrets|$url --set=imagePullSecrets[0]=regcred --set=global.imagePullSecrets[0]=shared-regcred"
  "global-registry|$url --set=global.imageRegistry=mirror.example.com"
  "openshift-auto|$url --api-versions=security.openshift.io/v1"
  "openshift-force|$url --set=global.compatibility.openshift.adaptSecurityContext=force"
  "openshift-disabled|$url --api-versions=security.openshift.io/v1 --set=global.compatibility.openshift.adaptSecurityContext=disabled"
  "namespace-override|$url --set=namespaceOverride=tokens --set=serviceMonitor.enabled=true --set=podMonitor.enabled=true --set=prometheusRule.enabled=true --set=grafanaDashboard.enabled=true --set=networkPolicy.enabled=true"
  "podmonitor-sidecars-only|--set=deployment.enabled=false --set=podMonitor.enabled=true"
  "probes-off|$url --set=probes.startup.enabled=false --set=probes.liveness.enabled=false --set=probes.readiness.timeoutSeconds=7 --set=probes.readiness.initialDelaySeconds=3"
  "strategy-recreate|$url --set=deployment.strategy.type=Recreate"
  "no-helm-test|$url --set=tests.enabled=false"
  "rotation-before-expiry-only|$url --set=pat.existingSecret=label-studio-pat --set=pat.rotation.beforeExpiry=30d"
)
for case in "${conventions[@]}"; do
  IFS='|' read -r set_name args <<<"$case"
  # shellcheck disable=SC2086  # the arguments are split on purpose
  if out=$("$HELM" template ls-token-refresher "$chart" --namespace label-studio $args 2>&1); then
    printf '%s\n' "$out" >"$work/rendered/$set_name.yaml"
    ok "helm template ($set_name: $args)"
  else
    bad "helm template ($set_name: $args)" "$out"
  fi
done
# The OpenShift case through helm lint too (lint sees no cluster: force is what it can check).
check "helm lint --strict (openshift-force)" "$HELM" lint --strict "$chart" --namespace label-studio \
  --set labelStudio.url=http://label-studio.label-studio.svc:8080 \
  --set global.compatibility.openshift.adaptSecurityContext=force

# A parent (umbrella) chart with `condition: ls-token-refresher.enabled`, the usual way to make a dependency optional:
# the strict schema must accept the key, false must drop every object of this chart, true must render them.
parent=$work/parent
mkdir -p "$parent/charts" "$parent/templates"
cp -r "$chart" "$parent/charts/ls-token-refresher"
cat >"$parent/Chart.yaml" <<'YAML'
apiVersion: v2
name: umbrella
version: 1.0.0
dependencies:
  - name: ls-token-refresher
    version: ">=0.0.0-0"
    repository: file://charts/ls-token-refresher
    condition: ls-token-refresher.enabled
YAML
printf 'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: umbrella\n' >"$parent/templates/configmap.yaml"
parent_url=--set=ls-token-refresher.labelStudio.url=http://label-studio.label-studio.svc:8080
for enabled in true false; do
  if out=$("$HELM" template umbrella "$parent" --namespace label-studio "$parent_url" \
    --set "ls-token-refresher.enabled=$enabled" 2>&1); then
    printf '%s\n' "$out" >"$work/parent-enabled-$enabled.yaml"
    ok "parent chart with condition: ls-token-refresher.enabled=$enabled renders"
  else
    bad "parent chart with condition: ls-token-refresher.enabled=$enabled renders" "$out"
  fi
done
check "helm lint --strict (parent chart with condition: ls-token-refresher.enabled)" \
  "$HELM" lint --strict "$parent" --namespace label-studio "$parent_url" --set ls-token-refresher.enabled=true

# ---- the chart README's values reference: generated from values.yaml, no drift ------------------------------------
check "chart README Parameters match values.yaml's @param comments (tests/chart/generate-readme.sh --check)" \
  bash "$here/generate-readme.sh" --check

# ---- values the chart must reject ------------------------------------------------------------------------------------
for values in "$here"/invalid/*.yaml; do
  set_name=$(basename "$values" .yaml)
  expect=$(sed -n '1s/^# expect: //p' "$values")
  if out=$("$HELM" template ls-token-refresher "$chart" --namespace label-studio -f "$values" 2>&1); then
    bad "rejects invalid values ($set_name)" "rendered without error; expected: $expect"
  elif ! printf '%s' "$out" | grep -qE -- "$expect"; then
    bad "rejects invalid values ($set_name)" "error does not match '$expect':
$out"
  else
    ok "rejects invalid values ($set_name)"
  fi
done

# ---- deploy/: regenerate, drift check ----------------------------------------------------------------------------
if out=$(bash "$here/generate-deploy.sh" --out "$work/deploy" 2>&1); then
  ok "generate deploy/ from the chart"
  # The committed deploy/ must be exactly what the chart renders now.
  # deploy/image/ (the offline image recipe) and the release tooling are not generated from the chart.
  if out=$(diff -ru "$deploy" "$work/deploy" -x README.md -x image -x __pycache__ -x release.sh -x package-chart.sh \
    -x check-versions.py -x normalize-sbom.py -x controller-examples.yaml 2>&1); then
    ok "deploy/ is up to date with the chart (drift check)"
  else
    bad "deploy/ is up to date with the chart (drift check): run tests/chart/generate-deploy.sh" "$out"
  fi
else
  bad "generate deploy/ from the chart" "$out"
fi

# checkov is the slow part (10-20 s a run): start it now and collect it at the end.
# Renders that switch a hardening default off on purpose are scanned on their own, with that check skipped:
#   probes-off      CKV_K8S_8 "Liveness Probe": the user turned it off (probes.liveness.enabled=false).
#   openshift-*     CKV_K8S_40 "high UID": no UID is pinned; OpenShift's SCC assigns one from the namespace's
#                   range (1000000000 and up), which is what the switch is for.
run_checkov "$work/checkov/chart" "$(join "${skips[@]}" "${chart_skips[@]}")" \
  -d "$work/rendered" --framework kubernetes --skip-path 'probes-off|openshift-(auto|force)'
run_checkov "$work/checkov/chart-probes-off" "$(join "${skips[@]}" "${chart_skips[@]}" CKV_K8S_8)" \
  -f "$work/rendered/probes-off.yaml" --framework kubernetes
run_checkov "$work/checkov/chart-openshift" "$(join "${skips[@]}" "${chart_skips[@]}" CKV_K8S_40)" \
  -f "$work/rendered/openshift-auto.yaml" "$work/rendered/openshift-force.yaml" --framework kubernetes
run_checkov "$work/checkov/deploy" "$(join "${skips[@]}")" -d "$deploy" --framework kubernetes
run_checkov "$work/checkov/docker" "$(join "${skips[@]}")" -f "$root/Dockerfile" --framework dockerfile

# ---- kubernetes-validate --strict -------------------------------------------------------------------------------------
validate() { # validate NAME "VERSION..." FILE: one process for all versions (Python start-up dominates)
  local name=$1 versions=$2 file=$3 out args=()
  for v in $versions; do args+=(-k "$v"); done
  if out=$("$KUBERNETES_VALIDATE" --strict --quiet "${args[@]}" "$file" 2>&1) \
    && ! printf '%s' "$out" | grep -qiE '^ERROR|failed'; then
    ok "$name"
  else
    bad "$name" "$out"
  fi
}
for f in "$work"/rendered/*.yaml; do
  [ -s "$f" ] || continue
  validate "kubernetes-validate --strict k8s $K8S_SIDECARS + $K8S_NEWEST (chart: $(basename "$f" .yaml))" \
    "$K8S_SIDECARS $K8S_NEWEST" "$f"
done
for f in "$deploy"/*.yaml "$deploy"/monitoring/*.yaml; do
  versions="$K8S_SIDECARS $K8S_NEWEST"
  # Everything but the native sidecar example must also work on clusters without native sidecars.
  case $f in */native-sidecar.yaml) ;; */monitoring/*) ;; *) versions="$K8S_OLDEST $versions" ;; esac
  validate "kubernetes-validate --strict k8s ${versions// / + } (${f#"$root"/})" "$versions" "$f"
done
# ... and the native one must not: its init container's restartPolicy is a 1.28 field (proves strictness works).
if "$KUBERNETES_VALIDATE" --strict --quiet -k "$K8S_OLDEST" "$deploy/native-sidecar.yaml" >/dev/null 2>&1; then
  bad "kubernetes-validate --strict k8s $K8S_OLDEST rejects deploy/native-sidecar.yaml (restartPolicy on an init container)"
else
  ok "kubernetes-validate --strict k8s $K8S_OLDEST rejects deploy/native-sidecar.yaml (restartPolicy on an init container)"
fi

# ---- the sidecar templates as another chart uses them: a missing URL is an error, not a broken pod -------------
cp -r "$here/deploy-examples" "$work/examples"
mkdir -p "$work/examples/charts"
cp -r "$chart" "$work/examples/charts/ls-token-refresher"
# The sidecar config has no values schema (the including chart names it): the templates check it themselves.
# Each case: what it breaks | the --set/--set-string argument | the error it must produce.
sidecar_invalid=(
  "a missing url|--set=tokenRefresher.url=|config.url \(Label Studio base URL\) is required"
  "an unknown key|--set=tokenRefresher.proxyport=9500|unknown config key \"proxyport\""
  "an unknown mode|--set=tokenRefresher.mode=daemon|mode must be run, once, proxy or gate"
  "a log filter directive|--set-string=tokenRefresher.logLevel=info\\,ls_token_refresher=debug|logLevel must be one of"
  "a log format|--set=tokenRefresher.logFormat=xml|logFormat must be plain or json"
  "a non-boolean native|--set-string=tokenRefresher.native=yes|native must be true or false"
  "a port out of range|--set=tokenRefresher.adminPort=70000|adminPort must be a port number"
  "the proxy on the admin port|--set=tokenRefresher.proxyPort=9417|adminPort and proxyPort are both 9417"
  "a bad proxy timeout|--set=tokenRefresher.proxyTimeout=soon|proxyTimeout must be a duration"
  "proxy: true beside mode once|--set=tokenRefresher.proxy=true|proxy: true is for mode run"
  "a token mount in proxy mode|--set=tokenRefresher.mode=proxy|modes proxy and gate write no token files"
  "a gate without a policy|--set=gate.allowOrgs=null|mode gate admits nobody without allowOrgs and/or allowUsers"
  "a PAT given to the gate|--set=gate.patSecret.name=label-studio-pat|mode gate takes no patSecret"
  "gate options outside mode gate|--set=tokenRefresher.allowUsers={ann@example.org}|are for mode gate"
  "a bad gate cache TTL|--set=gate.gateCacheTTL=soon|gateCacheTTL must be a duration"
  "the gate on the backend's port|--set=gate.gatePort=9090|gatePort \\(9090\\) and backendPort \\(9090\\) must differ"
)
for case in "${sidecar_invalid[@]}"; do
  IFS='|' read -r what arg expect <<<"$case"
  if out=$("$HELM" template x "$work/examples" "$arg" 2>&1); then
    bad "sidecar templates reject $what" "rendered without error"
  elif printf '%s' "$out" | grep -qE -- "$expect"; then
    ok "sidecar templates reject $what"
  else
    bad "sidecar templates reject $what" "error does not match '$expect':
$out"
  fi
done
# With `context`, the sidecar defaults come from this chart's values as the parent sets them: image.* and the global
# registry, and the OpenShift switch (assertions.py checks the renders).
digest=sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
sidecar_cases=(
  "mirror|--set=ls-token-refresher.image.registry=mirror.example.com --set=ls-token-refresher.image.digest=$digest --set=ls-token-refresher.image.pullPolicy=Always"
  "global-registry|--set=global.imageRegistry=registry.internal"
  "openshift|--set=global.compatibility.openshift.adaptSecurityContext=force"
)
for case in "${sidecar_cases[@]}"; do
  IFS='|' read -r what args <<<"$case"
  # shellcheck disable=SC2086  # the arguments are split on purpose
  if out=$("$HELM" template x "$work/examples" --namespace label-studio $args 2>&1); then
    printf '%s\n' "$out" >"$work/examples-$what.yaml"
    ok "sidecar templates render with the parent's values ($what: $args)"
  else
    bad "sidecar templates render with the parent's values ($what: $args)" "$out"
  fi
done
check "helm lint --strict (tests/chart/deploy-examples, the sidecar templates as a dependency)" \
  "$HELM" lint --strict "$work/examples" --namespace label-studio

# ---- semantic assertions ---------------------------------------------------------------------------------------------
if out=$("$PY" "$here/assertions.py" "$work/rendered" "$deploy" "$chart" "$work" 2>&1); then :; fi
while IFS= read -r line; do
  case $line in
    "ok   "*) ok "${line#ok   }" ;;
    "FAIL "*) bad "${line#FAIL }" ;;
    *) [ -n "$line" ] && bad "assertions.py: $line" ;;
  esac
done <<<"$out"

# ---- Prometheus rules: promtool check + unit tests --------------------------------------------------------------
# The rules as the chart renders them now (deploy/monitoring/alerts.rules.yml is the same text, drift-checked).
cp "$work/deploy/monitoring/alerts.rules.yml" "$work/rules/alerts.full.rules.yml" 2>/dev/null
check "promtool check rules (default thresholds)" "$PROMTOOL" check rules "$work/rules/alerts.full.rules.yml"
# With every option (selector, extra alert labels, runbook URLs): still valid PromQL and templates.
"$PY" - "$work/rendered/full.yaml" "$work/rules/alerts.options.rules.yml" <<'EOF'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d.get("kind") == "PrometheusRule"]
yaml.safe_dump({"groups": docs[0]["spec"]["groups"]}, open(sys.argv[2], "w"), sort_keys=False)
EOF
check "promtool check rules (all prometheusRule options)" "$PROMTOOL" check rules "$work/rules/alerts.options.rules.yml"
# Unit tests: the test file's expectations compare labels and the summary; descriptions are free text.
"$PY" - "$work/rules/alerts.full.rules.yml" "$work/rules/alerts.rules.yml" <<'EOF'
import sys, yaml
rules = yaml.safe_load(open(sys.argv[1]))
for group in rules["groups"]:
    for rule in group["rules"]:
        rule["annotations"] = {"summary": rule["annotations"]["summary"]}
yaml.safe_dump(rules, open(sys.argv[2], "w"), sort_keys=False)
EOF
cp "$here/rules/alerts.test.yml" "$work/rules/"
check "promtool test rules (tests/chart/rules/alerts.test.yml)" "$PROMTOOL" test rules "$work/rules/alerts.test.yml"
# Every alert the chart renders has a test that expects it to fire and one that expects it not to.
if out=$("$PY" - "$work/rules/alerts.rules.yml" "$work/rules/alerts.test.yml" <<'EOF'
import sys, yaml
alerts = {r["alert"] for g in yaml.safe_load(open(sys.argv[1]))["groups"] for r in g["rules"]}
fires, quiet = set(), set()
for t in yaml.safe_load(open(sys.argv[2]))["tests"]:
    for a in t.get("alert_rule_test", []):
        (fires if a.get("exp_alerts") else quiet).add(a["alertname"])
missing = sorted(f"{a} ({what})" for a in alerts for what, seen in (("firing", fires), ("not firing", quiet))
                 if a not in seen)
if missing:
    sys.exit("alerts without a test: " + ", ".join(missing))
EOF
); then ok "every alert has a firing and a not-firing promtool test"; else bad "every alert has a firing and a not-firing promtool test" "$out"; fi

# ---- checkov results ------------------------------------------------------------------------------------------------
collect_checkov "checkov kubernetes (rendered chart, all value sets)" "$work/checkov/chart"
collect_checkov "checkov kubernetes (rendered chart: probes-off, liveness check skipped)" \
  "$work/checkov/chart-probes-off"
collect_checkov "checkov kubernetes (rendered chart: OpenShift, high-UID check skipped)" "$work/checkov/chart-openshift"
collect_checkov "checkov kubernetes (deploy/)" "$work/checkov/deploy"
collect_checkov "checkov dockerfile (Dockerfile)" "$work/checkov/docker"

finish
