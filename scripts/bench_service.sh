#!/usr/bin/env bash
# Benchmarks of the model service on loopback: schema fuzzing of the whole API (schemathesis) and the
# manifest route under load (wrk; `apt-get install wrk`). Serves a COPY of a release store (the fuzzer
# calls the admin withdrawal route), stops the server it started by its process id.
# Usage: bash scripts/bench_service.sh RUN_DIR STORE_DIR SIGNING_KEY [PORT]
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
RUN=$1; STORE=$2; KEY=$3; PORT=${4:-8765}
WORK=$(mktemp -d)
cp -r "$STORE" "$WORK/store"
export FEDHOME_ADMIN_TOKEN="bench-admin-token-$(date +%s%N)"
serve() {
  fedhome-server serve --store "$WORK/store" --run "$RUN" --public-key "$RUN/ledger_public_key.pem" \
    --signing-key "$KEY" --port "$PORT" > "$WORK/serve.log" 2>&1 &
  SERVER=$!
  for _ in $(seq 50); do curl -sf "http://127.0.0.1:$PORT/health" > /dev/null && return; sleep 0.2; done
  echo "the service did not start" >&2; exit 1
}
trap 'kill $SERVER 2>/dev/null || true; rm -rf "$WORK"' EXIT
serve
for seed in 1 2; do
  st run "http://127.0.0.1:$PORT/openapi.json" --checks all --max-examples 200 --seed "$seed" \
    -H "Authorization: Bearer $FEDHOME_ADMIN_TOKEN" | grep -E "generated|passed|failure|Seed" || true
done
kill $SERVER; wait $SERVER 2>/dev/null || true
rm -rf "$WORK/store"; cp -r "$STORE" "$WORK/store"  # the fuzzer may have withdrawn releases
serve
URL="http://127.0.0.1:$PORT/v1/releases/latest"
echo "== $URL, full body"
wrk -t2 -c32 -d15s --latency "$URL" | grep -E "Requests/sec|99%|50%|Non-2xx"
ETAG=$(curl -s -D - -o /dev/null "$URL" | grep -i '^etag' | cut -d' ' -f2 | tr -d '\r')
echo "== $URL, If-None-Match (304)"
wrk -t2 -c32 -d15s --latency -H "If-None-Match: $ETAG" "$URL" | grep -E "Requests/sec|99%|50%"
