#!/usr/bin/env bash
# A secured Flower deployment of fedhome on this machine (loopback): TLS and SuperNode authentication with
# Flower 1.42's own flags. It
#   1. makes a CA, a server certificate for 127.0.0.1/localhost (openssl) and one ECDSA key pair per
#      SuperNode (ssh-keygen, the OpenSSH format Flower reads);
#   2. starts a SuperLink with --ssl-* and --enable-supernode-auth, and registers each node's public key
#      with `flwr supernode register`;
#   3. with --check-unregistered, starts one SuperNode with a key that was never registered and checks that
#      the SuperLink refuses it (Flower's "[code: 2004] Failed to activate SuperNode");
#   4. starts N SuperNodes (--node-config "partition-id=i num-partitions=N"), submits the fedhome app with a
#      tiny run config (40-shopper synthetic shop, 2 rounds), waits for the run to end and checks its ledger
#      with `fedhome-audit verify`;
#   5. stops every process it started, by process id, also on error or Ctrl-C.
# Usage:
#   scripts/flower_deploy.sh [--nodes N] [--out DIR] [--check-unregistered] [--run-config 'k=v k2="s"']...
# --run-config values override the tiny defaults below (TOML values, as for `flwr run --run-config`), e.g.
#   scripts/flower_deploy.sh --run-config 'federated.rounds=3 data.synthetic.n_users=100'
# Certificates, keys, logs (superlink.log, supernode-*.log, serverapp.log), the run config and the run
# folder (run/) stay in the output directory (default runs/flower-deploy-<time>), printed first.
# Exit status: 0 when the run finished completed and its ledger verified; 1 otherwise.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

NODES=2
OUT="runs/flower-deploy-$(date +%Y%m%d-%H%M%S)"
CHECK_UNREGISTERED=0
USER_CONFIG=()
RUN_TIMEOUT_S="${RUN_TIMEOUT_S:-900}"  # the tiny run took about 2 minutes on a busy 2-core machine
START_TIMEOUT_S=60
usage() { sed -n '2,/^# Exit status/p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --nodes) NODES="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --check-unregistered) CHECK_UNREGISTERED=1; shift ;;
    --run-config) USER_CONFIG+=("$2"); shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ "$NODES" =~ ^[1-9][0-9]*$ ]] || { echo "--nodes must be a positive integer" >&2; exit 2; }

. .venv/bin/activate
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
echo "output directory: $OUT"
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 HF_HUB_OFFLINE=1
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
# Else the SuperLink runs `uv sync` on the app's dependencies for every run (it would download a CUDA torch).
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
# Every process `start` starts, and whatever it spawns (SuperExec, flwr-serverapp, flwr-clientapp), carries
# this marker in its environment: the cleanup finds the detached ones by it (they also exit by themselves
# a few seconds after their parent). This script itself does not carry it.
MARKER="$OUT"
unset FLWR_HOME
CERTS="$OUT/certs" KEYS="$OUT/keys" HOMES="$OUT/homes"
mkdir -p "$CERTS" "$KEYS" "$HOMES"

# --- processes: started in the background, stopped by pid --------------------------------------------
PIDS=()
NAMES=()
start() {  # start NAME COMMAND...: runs in $OUT with its own FLWR_HOME, output to $OUT/NAME.log
  local name="$1"; shift
  mkdir -p "$HOMES/$name"
  (cd "$OUT" && FEDHOME_DEPLOY_MARKER="$MARKER" FLWR_HOME="$HOMES/$name" exec "$@") > "$OUT/$name.log" 2>&1 &
  PIDS+=("$!"); NAMES+=("$name")
}
marked_pids() {  # live processes carrying our marker (what the SuperLink and SuperNodes spawned)
  python - "$MARKER" <<'PY'
import sys
from pathlib import Path

marker = f"FEDHOME_DEPLOY_MARKER={sys.argv[1]}".encode()
for proc in Path("/proc").glob("[0-9]*"):
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        if state != "Z" and marker in (proc / "environ").read_bytes().split(b"\0"):
            print(proc.name)
    except (OSError, IndexError):
        continue
PY
}
wait_gone() {  # wait_gone SECONDS PID...: true once none of the pids is alive
  local deadline=$((SECONDS + $1)) pid alive; shift
  while :; do
    alive=0
    for pid in "$@"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && return 0
    [ "$SECONDS" -ge "$deadline" ] && return 1
    sleep 0.5
  done
}
cleanup() {
  local status=$? i left pid
  trap - EXIT INT TERM
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do  # SuperNodes first, the SuperLink last
    kill "${PIDS[i]}" 2>/dev/null || true
  done
  if [ "${#PIDS[@]}" -gt 0 ] && ! wait_gone 15 "${PIDS[@]}"; then
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  fi
  left="$(marked_pids)"  # SuperExec and app processes: SIGTERM, then SIGKILL after 10 s
  for pid in $left; do kill "$pid" 2>/dev/null || true; done
  # shellcheck disable=SC2086
  if [ -n "$left" ] && ! wait_gone 10 $left; then
    for pid in $(marked_pids); do echo "killing $pid (ignored SIGTERM)" >&2; kill -KILL "$pid" 2>/dev/null || true; done
  fi
  [ "${#PIDS[@]}" -gt 0 ] && echo "stopped ${NAMES[*]}; logs in $OUT"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
fail() { echo "error: $*" >&2; exit 1; }
check_alive() {
  local i
  for i in "${!PIDS[@]}"; do
    kill -0 "${PIDS[i]}" 2>/dev/null || fail "${NAMES[i]} exited; see $OUT/${NAMES[i]}.log"
  done
}
free_port() {
  python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
json_field() {  # json_field KEY < `flwr ... --format json` output (after any log lines)
  python -c 'import json, sys
text = sys.stdin.read()
data = json.loads(text[text.index("{"):]) if "{" in text else {}
value = data
for part in sys.argv[1].split("."):
    value = value[int(part)] if isinstance(value, list) else value.get(part, "")
print(value)' "$1"
}

# --- 1. a CA, the SuperLink's certificate, the SuperNodes' auth keys -------------------------------------
# A self-made CA for loopback only: the server certificate names 127.0.0.1 and localhost, nothing else.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -sha256 \
  -subj "/O=fedhome loopback CA" -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" -keyout "$CERTS/ca.key" -out "$CERTS/ca.crt" 2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=127.0.0.1" \
  -keyout "$CERTS/server.key" -out "$CERTS/server.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' \
  > "$CERTS/server.ext"
openssl x509 -req -in "$CERTS/server.csr" -CA "$CERTS/ca.crt" -CAkey "$CERTS/ca.key" -CAcreateserial \
  -days 30 -sha256 -extfile "$CERTS/server.ext" -out "$CERTS/server.pem" 2>/dev/null
chmod 600 "$CERTS/ca.key" "$CERTS/server.key"
for ((i = 0; i < NODES; i++)); do
  ssh-keygen -q -t ecdsa -b 384 -N "" -C "" -f "$KEYS/node-$i"
done
echo "CA, server certificate and $NODES SuperNode key pairs in $CERTS and $KEYS"

# --- 2. the SuperLink (Fleet, Control and Runtime APIs on one TLS port), and the CLI's connection ---------
LINK_PORT="$(free_port)"
start superlink flower-superlink --host 127.0.0.1 --port "$LINK_PORT" \
  --ssl-ca-certfile "$CERTS/ca.crt" --ssl-certfile "$CERTS/server.pem" --ssl-keyfile "$CERTS/server.key" \
  --enable-supernode-auth --database "$OUT/state.db" --disable-runtime-dependency-installation
mkdir -p "$HOMES/cli"
cat > "$HOMES/cli/config.toml" <<EOF
[superlink]
default = "fedhome-secure"

[superlink.fedhome-secure]
address = "127.0.0.1:$LINK_PORT"
root-certificates = "$CERTS/ca.crt"
EOF
flwr_cli() { (cd "$OUT" && FLWR_HOME="$HOMES/cli" flwr "$@"); }
deadline=$((SECONDS + START_TIMEOUT_S))
until flwr_cli supernode list fedhome-secure --format json 2>/dev/null | grep -q '"success": true'; do
  check_alive
  [ "$SECONDS" -lt "$deadline" ] || fail "the SuperLink did not answer over TLS within ${START_TIMEOUT_S} s"
  sleep 1
done
echo "SuperLink up on 127.0.0.1:$LINK_PORT (TLS, SuperNode authentication on; pid ${PIDS[0]})"
for ((i = 0; i < NODES; i++)); do
  flwr_cli supernode register "$KEYS/node-$i.pub" fedhome-secure --format json > "$OUT/register-$i.json"
  [ "$(json_field success < "$OUT/register-$i.json")" = True ] || fail "registering node-$i: $(cat "$OUT/register-$i.json")"
done
echo "registered $NODES SuperNode public keys"

# --- 3. (optional) a SuperNode whose key was never registered must be refused --------------------------
if [ "$CHECK_UNREGISTERED" = 1 ]; then
  ssh-keygen -q -t ecdsa -b 384 -N "" -C "" -f "$KEYS/unregistered"
  start supernode-unregistered flower-supernode --superlink "127.0.0.1:$LINK_PORT" \
    --root-certificates "$CERTS/ca.crt" --auth-supernode-private-key "$KEYS/unregistered" \
    --node-config "partition-id=0 num-partitions=$NODES" --host 127.0.0.1 --port "$(free_port)"
  pid="${PIDS[-1]}"
  wait_gone "$START_TIMEOUT_S" "$pid" || fail "the unregistered SuperNode was not refused within ${START_TIMEOUT_S} s"
  code=0; wait "$pid" || code=$?
  grep -q "2004" "$OUT/supernode-unregistered.log" \
    || fail "the unregistered SuperNode exited ($code) without Flower's code 2004; see its log"
  PIDS=("${PIDS[@]:0:${#PIDS[@]}-1}"); NAMES=("${NAMES[@]:0:${#NAMES[@]}-1}")
  echo "unregistered key refused: $(grep -m1 "2004" "$OUT/supernode-unregistered.log")" \
    "($(grep -m1 -o "Exit Code: [0-9]*" "$OUT/supernode-unregistered.log"), process exit status $code)"
fi

# --- 4. the SuperNodes, the run -------------------------------------------------------------------------
for ((i = 0; i < NODES; i++)); do
  start "supernode-$i" flower-supernode --superlink "127.0.0.1:$LINK_PORT" \
    --root-certificates "$CERTS/ca.crt" --auth-supernode-private-key "$KEYS/node-$i" \
    --node-config "partition-id=$i num-partitions=$NODES" --host 127.0.0.1 --port "$(free_port)"
done
echo "started $NODES SuperNodes"

# The tiny run config, merged with --run-config (one TOML file: Flower replaces whole tables when several
# --run-config strings name keys of the same table). Absolute paths: the apps resolve relative ones against
# the SuperLink's and SuperNodes' working directory ($OUT), not the repository.
ROOT="$ROOT" OUT="$OUT" NODES="$NODES" python - "$OUT/run_config.toml" "${USER_CONFIG[@]}" <<'PY'
import json, os, re, sys, tomllib

root, out, nodes = os.environ["ROOT"], os.environ["OUT"], os.environ["NODES"]
defaults = {
    "data.synthetic.n_users": "40", "data.synthetic.n_items": "60", "data.synthetic.n_categories": "4",
    "data.cold_item_fraction": "0.0", "encoder.backend": '"torch"', "encoder.device": '"cpu"',
    "encoder.cache_dir": json.dumps(f"{root}/.cache/fedhome/embeddings"), "model.dim": "16", "model.residual_rank": "8",
    "model.max_history": "8", "federated.rounds": "2", "federated.eval_every": "0",
    "federated.sample_rate": "0.5", "federated.n_negatives": "16", "federated.max_examples_per_user": "4",
    "federated.nodes": nodes, "federated.run_dir": json.dumps(f"{out}/run"), "federated.node_timeout_s": "300.0",
    "start_check.enabled": '"off"',
}
pattern = re.compile(r"(\S+?)=('[^']*'|\"[^\"]*\"|\S+)")  # flwr's own --run-config syntax
for text in sys.argv[2:]:
    defaults.update(pattern.findall(text))
lines = "".join(f"{key} = {value}\n" for key, value in defaults.items())
tomllib.loads(lines)  # a malformed value fails here, not after the SuperNodes started
open(sys.argv[1], "w").write(lines)
PY

# `flwr run` packs the folder it is given (walking .venv too: seconds); a copy without the folders the
# app bundle leaves out anyway gives the same bundle at once.
python - "$ROOT" "$OUT/app" <<'PY'
import shutil, sys

shutil.rmtree(sys.argv[2], ignore_errors=True)
shutil.copytree(sys.argv[1], sys.argv[2], ignore=shutil.ignore_patterns(
    ".git", ".venv", "runs", ".cache", "build", "__pycache__", "*.egg-info", ".*_cache", ".hypothesis"))
PY
flwr_cli run "$OUT/app" fedhome-secure --run-config "$OUT/run_config.toml" --format json > "$OUT/submit.json"
run_id="$(json_field run-id < "$OUT/submit.json")"
[ "$(json_field success < "$OUT/submit.json")" = True ] && [ -n "$run_id" ] \
  || fail "flwr run failed: $(cat "$OUT/submit.json")"
echo "run $run_id submitted; waiting for it (up to ${RUN_TIMEOUT_S} s; flwr ls / flwr log with FLWR_HOME=$HOMES/cli)"

deadline=$((SECONDS + RUN_TIMEOUT_S))
status=""
while :; do
  check_alive
  flwr_cli ls fedhome-secure --run-id "$run_id" --format json > "$OUT/status.json" 2>/dev/null || true
  status="$(json_field runs.0.status < "$OUT/status.json" 2>/dev/null || true)"
  case "$status" in finished*) break ;; esac
  [ "$SECONDS" -lt "$deadline" ] || fail "run $run_id still '$status' after ${RUN_TIMEOUT_S} s"
  sleep 3
done
flwr_cli log "$run_id" fedhome-secure --show > "$OUT/serverapp.log" 2>&1 || true
echo "run $run_id: $status (ServerApp log: $OUT/serverapp.log)"
if [ "$status" != "finished:completed" ]; then
  fail "$(json_field runs.0.status-details < "$OUT/status.json")"
fi

# --- 5. the run folder and its ledger -------------------------------------------------------------------
fedhome-audit verify "$OUT/run" --public-key "$OUT/run/ledger_public_key.pem" > "$OUT/audit.txt" 2>&1 \
  || fail "fedhome-audit verify failed: $(tail -5 "$OUT/audit.txt")"
python - "$OUT/run/summary.json" <<'PY'
import json, sys

s = json.load(open(sys.argv[1]))
print(f"{s['rounds']} rounds on {s['nodes']} nodes ({s['population']} shoppers), user epsilon "
      f"{s['user_epsilon']}; ledger verified (fedhome-audit verify)")
PY
echo "run folder: $OUT/run"
