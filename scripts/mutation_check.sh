#!/usr/bin/env bash
# Mutation check of the privacy mechanism (scripts/mutation_check.py): each mutant breaks one part on purpose
# in a scratch copy and runs the tests that must catch it; prints one line per mutant and "N killed, M
# survived"; exits non-zero when any survives. A few minutes on 2 cores; results in docs/results.md.
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 HF_HUB_OFFLINE=1
python scripts/mutation_check.py "$@"
