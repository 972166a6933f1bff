#!/usr/bin/env bash
# The privacy/utility runs of docs/results.md on amazon_beauty: user-level DP at epsilon 8, 4, 2, 1 and
# clipping only, all with the default federated settings (500 rounds, q = 0.05, C = 1, server Adam).
# One run at a time: each uses both cores (two simulated nodes, one thread each).
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
export FLWR_TELEMETRY_ENABLED=0 OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1
DATA=${DATA:-../shared/data/amazon_beauty}
OUT=${OUT:-runs/privacy-utility}
common=(--dataset "$DATA" --no-progress --set data.cold_item_fraction=0 --set federated.eval_every=50)
for eps in ${EPSILONS:-8 none 4 2 1}; do
  if [ "$eps" = none ]; then
    fedhome-sim federated "${common[@]}" --mode none --out "$OUT/no-noise"
  else
    fedhome-sim federated "${common[@]}" --epsilon "$eps" --out "$OUT/eps-$eps"
  fi
done
