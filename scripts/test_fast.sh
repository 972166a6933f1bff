#!/usr/bin/env bash
# The fast tier for daily work (about a minute here): lint, format check, import boundaries and the unit
# tests (`pytest -m unit`: no Flower run, no server, no browser; tests/conftest.py says what each tier is).
# Setup is skipped when nothing changed. mypy is not part of it (about 50 s on its own): run `mypy` before a
# commit. The full suite (scripts/test.sh) is the README's test command and CI's.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 HF_HUB_OFFLINE=1
echo "== ruff check" && ruff check .
echo "== ruff format --check" && ruff format --check .
echo "== pytest -m unit" && python -m pytest -q -m unit --durations=10 "$@"
