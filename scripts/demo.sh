#!/usr/bin/env bash
# Sets up fedhome and runs the main job on the built-in synthetic shop: generate the shop, embed the
# catalogue, train and evaluate every baseline and the two-tower model, print the metrics table and write
# a results folder under runs/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1
fedhome-sim run --dataset synthetic --model all "$@"
