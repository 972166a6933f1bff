#!/usr/bin/env bash
# Sets up fedhome and runs the main job on the built-in synthetic shop:
# 1. the baselines and the centralised two-tower model (the non-private reference), then
# 2. federated training on Flower with user-level DP (epsilon 8), the audit of its signed ledger and the
#    auditor's report, then
# 3. a signed release of the trained model, installed on a "device" that verifies it and composes one
#    shopper's homepage locally; then simulated shoppers for the demo page and the command that serves it.
# Results go to runs/demo-central, runs/demo-federated, runs/demo-report, runs/demo-releases, runs/demo-device.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1
rm -rf runs/demo-central runs/demo-federated runs/.demo-federated.ledger_signing_key.pem runs/demo-report \
  runs/demo-releases runs/demo-device runs/demo-device-history.jsonl runs/demo-device-now \
  runs/demo-shoppers.jsonl
KEY=runs/.demo-federated.ledger_signing_key.pem  # the server's key, kept outside the run folder
PUB=runs/demo-federated/ledger_public_key.pem
fedhome-sim run --dataset synthetic --model all --out runs/demo-central
# --epsilon 8 covers the 60 rounds and one DP trending release at the end (the homepage's Trending section)
fedhome-sim federated --dataset synthetic --rounds "${ROUNDS:-60}" --epsilon 8 --set trending.final=true \
  --out runs/demo-federated
fedhome-audit verify runs/demo-federated --public-key "$PUB"
fedhome-audit report runs/demo-federated --public-key "$PUB" --out runs/demo-report
fedhome-server release runs/demo-federated --store runs/demo-releases --signing-key "$KEY"
fedhome-client install --from runs/demo-releases/000001 --cache runs/demo-device --public-key "$PUB"
# one shopper's recent history (synthetic shop item ids), then the homepage ranked on the device
python - <<'PY'
import json
items = json.load(open("runs/demo-releases/000001/items.json"))
now = max(item["created_at"] or 0 for item in items) + 86400  # "today" in the synthetic shop's timeline
open("runs/demo-device-now", "w").write(str(now))
events = [(items[i]["id"], kind, now - 3600 * (6 - n)) for n, (i, kind) in enumerate(
    [(11, "view"), (11, "cart"), (250, "view"), (900, "view"), (1400, "purchase")])]
with open("runs/demo-device-history.jsonl", "w") as out:
    out.writelines(json.dumps({"item_id": i, "event": e, "timestamp": t}) + "\n" for i, e, t in events)
PY
fedhome-client homepage --cache runs/demo-device --public-key "$PUB" --history runs/demo-device-history.jsonl \
  --now "$(cat runs/demo-device-now)" \
  | python -c "import json,sys; page=json.load(sys.stdin); [print(s['title'] + ': ' + '; '.join(c['title'][:40] + ' (' + c['copy'] + ')' for c in s['cards'][:3])) for s in page['sections']]"
# simulated shoppers of the run's synthetic shop for the demo page, and how to open it (not started here)
fedhome-server demo-shoppers runs/demo-federated --out runs/demo-shoppers.jsonl
echo "Demo homepage page, ranked in your browser: fedhome-server serve --store runs/demo-releases" \
  "--run runs/demo-federated --public-key $PUB --demo-shoppers runs/demo-shoppers.jsonl; then open" \
  "http://127.0.0.1:8000/demo"
