#!/usr/bin/env bash
# Creates .venv (if missing) and installs fedhome with its test tools. torch==2.13.0 goes first: it is the
# CPU build this machine keeps on disk; any other torch requirement would download a multi-GB CUDA build.
# Skipped when nothing it installs from changed since the last successful setup: the stamp
# .venv/.fedhome-setup holds the sha256 of pyproject.toml, this script and the web lock file (the editable
# install follows the source tree by itself). FEDHOME_FORCE_SETUP=1 reinstalls anyway.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
STAMP=.venv/.fedhome-setup
WANTED=$(cat pyproject.toml scripts/setup.sh server/web/package-lock.json | sha256sum | cut -d' ' -f1)
if [ "${FEDHOME_FORCE_SETUP:-0}" != "1" ] && [ -x .venv/bin/python ] && [ -f "$STAMP" ] \
  && [ "$(cat "$STAMP")" = "$WANTED" ] && [ -f server/web/node_modules/.package-lock.json ]; then
  echo "setup: nothing changed since the last setup (FEDHOME_FORCE_SETUP=1 reinstalls)"
  exit 0
fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet torch==2.13.0
python -m pip install --quiet -e ".[dev]"
bash scripts/install_web.sh  # the demo page's onnxruntime-web (npm ci in server/web)
echo "$WANTED" > "$STAMP"
