#!/usr/bin/env bash
# Runs fedhome with `flwr run` in Flower's local simulation: `flwr run` starts a local SuperLink (address
# ":local:") that runs the ServerApp and the ClientApps of server/ and client/ on simulated nodes (Ray), with
# the settings of [tool.flwr.app.config] in pyproject.toml. Arguments go to `flwr run`, for example
#   scripts/flower_local.sh --run-config 'federated.rounds=2 federated.run_dir="/tmp/fedhome-run"'
# NODES (default 2) simulated nodes; it must equal federated.nodes, which the ServerApp waits for.
# The SuperLink keeps running after `flwr run` returns; this script stops it (by its pid) when the run ends.
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 HF_HUB_OFFLINE=1
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
# Else the SuperLink runs `uv sync` on the app's dependencies for every run (it would download a CUDA torch).
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
export FLWR_HOME="${FLWR_HOME:-$PWD/runs/flwr-home}"
free_port() {
  python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
# Our own ports (defaults 39091/39093), so that we never submit to a local SuperLink someone else started.
export FLWR_LOCAL_SUPERLINK_HTTP_API_PORT="${FLWR_LOCAL_SUPERLINK_HTTP_API_PORT:-$(free_port)}"
export FLWR_LOCAL_CONTROL_API_PORT="${FLWR_LOCAL_CONTROL_API_PORT:-$(free_port)}"
NODES="${NODES:-2}"

mkdir -p "$FLWR_HOME"
if [ ! -f "$FLWR_HOME/config.toml" ]; then
  printf '[superlink]\ndefault = "fedhome-local"\n\n' > "$FLWR_HOME/config.toml"
fi
if ! grep -q '^\[superlink\.fedhome-local\]' "$FLWR_HOME/config.toml"; then
  printf '\n[superlink.fedhome-local]\naddress = ":local:"\n' >> "$FLWR_HOME/config.toml"
fi

# The SuperLink `flwr run` spawned (detached): the flower-superlink on our port, logging into our FLWR_HOME.
superlink_pids() {
  python - "$FLWR_LOCAL_SUPERLINK_HTTP_API_PORT" "$FLWR_HOME/local-superlink/superlink.log" <<'PY'
import sys
from pathlib import Path

port, log_file = sys.argv[1], sys.argv[2]
for proc in Path("/proc").glob("[0-9]*"):
    try:
        args = [a.decode(errors="replace") for a in (proc / "cmdline").read_bytes().split(b"\0")]
    except OSError:
        continue
    pairs = dict(zip(args, args[1:]))
    if any(a.endswith("flower-superlink") for a in args[:2]) and pairs.get("--port") == port \
            and pairs.get("--log-file") == log_file:
        print(proc.name)
PY
}
stop_superlink() {
  local pid
  for pid in $(superlink_pids); do
    kill "$pid"  # SIGTERM: it stops its SuperExec too
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    echo "stopped the local SuperLink (pid $pid)"
  done
}
trap stop_superlink EXIT

log="$(mktemp)"
flwr run . fedhome-local --stream \
  --federation-config "num-supernodes=$NODES client-resources-num-cpus=1" "$@" | tee "$log"
run_id="$(grep -o 'Successfully started run [0-9]*' "$log" | grep -o '[0-9]*$' || true)"
rm -f "$log"
[ -n "$run_id" ] || { echo "flwr run did not start a run" >&2; exit 1; }
for _ in $(seq 20); do  # the status turns "finished:..." a moment after the last log line
  status="$(flwr ls fedhome-local --run-id "$run_id" --format json | python -c 'import json, sys
text = sys.stdin.read()
print(json.loads(text[text.index("{"):])["runs"][0]["status"])')"
  case "$status" in finished*) break ;; esac
  sleep 1
done
echo "run $run_id: $status (SuperLink log: $FLWR_HOME/local-superlink/superlink.log)"
[ "$status" = "finished:completed" ]
