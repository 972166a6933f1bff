#!/usr/bin/env bash
# The one test command: lint, format check, type check, import-boundary check and the test suite.
# Every tool is required: a missing tool fails the run. pytest's exit code 5 (no tests collected) fails too.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/install_browser.sh  # Debian's chromium for the browser tests
. .venv/bin/activate
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 HF_HUB_OFFLINE=1
echo "== ruff check" && ruff check .
echo "== ruff format --check" && ruff format --check .
echo "== mypy" && mypy
# every tier (unit, integration, browser, deployment); the 25 slowest tests are listed at the end
echo "== pytest" && python -m pytest -q --durations=25 "$@"
