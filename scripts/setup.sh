#!/usr/bin/env bash
# Creates .venv (if missing) and installs fedhome with its test tools. torch==2.13.0 goes first: it is the
# CPU build this machine keeps on disk; any other torch requirement would download a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet torch==2.13.0
python -m pip install --quiet -e ".[dev]"
bash scripts/install_web.sh  # the demo page's onnxruntime-web (npm ci in server/web)
