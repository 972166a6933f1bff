#!/usr/bin/env bash
# Sets up fedhome and runs the main job on the built-in synthetic shop:
# 1. the baselines and the centralised two-tower model (the non-private reference), then
# 2. federated training on Flower with user-level DP (epsilon 8), and the audit of its signed ledger.
# Results go to runs/demo-central and runs/demo-federated.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1
rm -rf runs/demo-central runs/demo-federated runs/.demo-federated.ledger_signing_key.pem
fedhome-sim run --dataset synthetic --model all --out runs/demo-central
fedhome-sim federated --dataset synthetic --rounds "${ROUNDS:-60}" --epsilon 8 --out runs/demo-federated
fedhome-audit verify runs/demo-federated --public-key runs/demo-federated/ledger_public_key.pem
