#!/usr/bin/env bash
# Runs the stock ML backend server (label-studio-ml 1.0.9, its own venv) with ml_backend/model.py on 127.0.0.1:PORT.
#
#   LABEL_STUDIO_URL=http://127.0.0.1:<proxy port> LABEL_STUDIO_API_KEY=placeholder-not-a-token \
#     bash tests/support/consumers/ml_backend/launch.sh PORT WORKDIR [EXTRA _wsgi.py ARGS...]
#
# EXTRA args go to the stock _wsgi.py, e.g. `--with hostname=http://127.0.0.1:<proxy port> access_token=placeholder`:
# init kwargs override the hostname/access_token Label Studio sends in /setup (label_studio_ml/model.py:511).
#
# Only the environment a user sets for the backend is passed through: LABEL_STUDIO_URL, LABEL_STUDIO_API_KEY
# (plus LSTR_ML_HELPER, the model's test knob, and LABEL_STUDIO_HOSTNAME for the `utils` helper). HOME is WORKDIR/home so
# the helpers' ~/.local/share/label-studio/media/upload short-cut (they read uploads from a local dir when it
# exists: label_studio_tools io.py:101-115) and their ~/.cache stay empty, and every download goes over HTTP.
#
# It does what `label-studio-ml init` + `label-studio-ml start` do, without the `os.system('python …')` indirection of
# `start` (label_studio_ml/server.py:140-143) so the PID is the server's: `init` renders the stock _wsgi.py from
# default_configs/_wsgi.py.tmpl, then this execs `python _wsgi.py --host 127.0.0.1 --port PORT` in the foreground.
set -euo pipefail
PORT=${1:?PORT}
WORK=${2:?WORKDIR}
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
: "${LSTR_ML_PYTHON:?source the env.sh printed by tests/support/consumers/provision.sh}"
: "${LABEL_STUDIO_URL:?}" "${LABEL_STUDIO_API_KEY:?}"
mkdir -p "$WORK/home"
rm -rf "$WORK/backend"
# `label-studio-ml init` (its console script's shebang points into the venv's build path: run the module instead).
(cd "$WORK" && env -i PATH=/usr/bin:/bin HOME="$WORK/home" \
  "$LSTR_ML_PYTHON" -m label_studio_ml.server init backend --script "$HERE/model.py:DownloadProbe" >/dev/null)
cd "$WORK/backend"
exec env -i PATH="$(dirname "$LSTR_ML_PYTHON"):/usr/bin:/bin" HOME="$WORK/home" LANG=C.UTF-8 PYTHONUNBUFFERED=1 \
  LABEL_STUDIO_URL="$LABEL_STUDIO_URL" LABEL_STUDIO_API_KEY="$LABEL_STUDIO_API_KEY" \
  ${LSTR_ML_HELPER:+LSTR_ML_HELPER="$LSTR_ML_HELPER"} \
  ${LABEL_STUDIO_HOSTNAME:+LABEL_STUDIO_HOSTNAME="$LABEL_STUDIO_HOSTNAME"} \
  "$LSTR_ML_PYTHON" _wsgi.py --host 127.0.0.1 --port "$PORT" --log-level INFO "${@:3}"
