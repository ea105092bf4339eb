#!/usr/bin/env bash
# A one-machine stand-in for the cluster: a Ray head, a local S3-compatible server (moto) and an MLflow
# server, all bound to 127.0.0.1 only, so `ray job submit`, `serve deploy` and s3:// / models:/ URIs can
# be tried without a cloud account.
#
#   scripts/local_stack.sh start    # start the three services, print the environment to export
#   scripts/local_stack.sh status   # which services answer
#   scripts/local_stack.sh env      # print the exports again
#   scripts/local_stack.sh stop     # stop exactly the processes `start` started (by their recorded ids)
#
#   eval "$(scripts/local_stack.sh env)"   # then: ray job submit …, serve deploy …, hsivar restore …
#
# State (PIDs, logs, the MLflow SQLite store and artifacts, env.sh) lives in $HSIVAR_STACK_DIR
# (default: work/stack under the repository); Ray's session files in $HSIVAR_STACK_RAY_TMP. Jobs write
# checkpoints, published weights, demo data and logs into $HSIVAR_STACK_WORK_DIR (default: work/ under the
# repository), passed to them as HSIVAR_WORK_DIR: `ray job submit --working-dir .` runs a job in a
# temporary copy of the directory that Ray deletes, so its relative work/ would be lost. The S3
# server keeps its objects in memory: they are gone after `stop`. Ports and paths are set with the
# HSIVAR_STACK_* variables below. `stop` never runs `ray stop` (that would stop every Ray instance on
# the machine): it ends the process sessions `start` created, by their recorded ids.
#
# Ray 2.60 binds its internal gRPC ports (GCS, raylet, workers) to all interfaces whatever
# --node-ip-address says; the dashboard, S3, MLflow and Serve HTTP listen on 127.0.0.1 only, and the
# cluster uses token authentication (RAY_AUTH_MODE=token).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STACK="${HSIVAR_STACK_DIR:-$ROOT/work/stack}"
WORK_DIR="${HSIVAR_STACK_WORK_DIR:-$ROOT/work}"             # HSIVAR_WORK_DIR of every job (absolute)
VENV_BIN="${HSIVAR_STACK_BIN:-$ROOT/.venv/bin}"
HOST=127.0.0.1
RAY_PORT="${HSIVAR_STACK_RAY_PORT:-6390}"                  # GCS
DASHBOARD_PORT="${HSIVAR_STACK_DASHBOARD_PORT:-8265}"      # dashboard: job submission, serve deploy
CLIENT_PORT="${HSIVAR_STACK_CLIENT_PORT:-23001}"           # Ray client server
AGENT_PORT="${HSIVAR_STACK_AGENT_PORT:-52375}"             # dashboard agent HTTP
METRICS_PORT="${HSIVAR_STACK_METRICS_PORT:-8090}"
S3_PORT="${HSIVAR_STACK_S3_PORT:-9000}"
MLFLOW_PORT="${HSIVAR_STACK_MLFLOW_PORT:-5050}"
SERVE_PORT="${HSIVAR_STACK_SERVE_PORT:-8000}"              # where `serve deploy deploy/serve.yaml` listens
RAY_CPUS="${HSIVAR_STACK_RAY_CPUS:-4}"
OBJECT_STORE_BYTES="${HSIVAR_STACK_OBJECT_STORE_BYTES:-1000000000}"
BUCKET="${HSIVAR_STACK_BUCKET:-hsivar}"
WAIT_S="${HSIVAR_STACK_WAIT_S:-90}"
# Ray's own temporary folder (sessions, logs, sockets). Kept apart from /tmp/ray so this stack never
# becomes the cluster a bare `ray.init()` elsewhere on the machine connects to; short, because Ray's
# socket paths must stay under 108 characters.
RAY_TMP="${HSIVAR_STACK_RAY_TMP:-/tmp/hsivar-ray-$RAY_PORT}"

die() { echo "local_stack: $*" >&2; exit 1; }

write_env() {
  mkdir -p "$STACK"
  cat >"$STACK/env.sh" <<EOF
export AWS_ENDPOINT_URL=http://$HOST:$S3_PORT
export AWS_ACCESS_KEY_ID=testing
export AWS_SECRET_ACCESS_KEY=testing
export AWS_DEFAULT_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true
export MLFLOW_TRACKING_URI=http://$HOST:$MLFLOW_PORT
export RAY_ADDRESS=$HOST:$RAY_PORT
export RAY_API_SERVER_ADDRESS=http://$HOST:$DASHBOARD_PORT
export RAY_DASHBOARD_ADDRESS=http://$HOST:$DASHBOARD_PORT
export RAY_AUTH_MODE=token
export HSIVAR_SERVE_URL=http://$HOST:$SERVE_PORT
export HSIVAR_STACK_BUCKET=$BUCKET
export HSIVAR_WORK_DIR=$WORK_DIR
EOF
}

port_open() {  # port_open PORT -> 0 when something accepts TCP connections on 127.0.0.1:PORT
  "$VENV_BIN/python" - "$1" <<'EOF'
import socket, sys
s = socket.socket()
s.settimeout(0.5)
sys.exit(0 if s.connect_ex(("127.0.0.1", int(sys.argv[1]))) == 0 else 1)
EOF
}

alive() {  # alive NAME -> 0 when the recorded process is running
  local pidfile="$STACK/$1.pid"
  [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

launch() {  # launch NAME PORT CMD... : start CMD in its own session (session id = its pid), record the pid
  local name="$1" port="$2"; shift 2
  if alive "$name"; then echo "local_stack: $name already running (pid $(cat "$STACK/$name.pid"))"; return; fi
  if port_open "$port"; then die "port $port (for $name) is already in use; set HSIVAR_STACK_*_PORT"; fi
  setsid "$@" >"$STACK/logs/$name.log" 2>&1 < /dev/null &
  echo $! >"$STACK/$name.pid"
}

wait_port() {  # wait_port NAME PORT
  local name="$1" port="$2" waited=0
  until port_open "$port"; do
    alive "$name" || die "$name exited during start-up; see $STACK/logs/$name.log"
    (( waited >= WAIT_S )) && die "$name did not open port $port within ${WAIT_S}s; see $STACK/logs/$name.log"
    sleep 1; waited=$((waited + 1))
  done
  echo "local_stack: $name ready on $HOST:$port"
}

start() {
  [[ "$WORK_DIR" == /* ]] || die "HSIVAR_STACK_WORK_DIR must be an absolute path, got $WORK_DIR"
  mkdir -p "$STACK/logs" "$STACK/mlartifacts" "$WORK_DIR"
  write_env
  # On any failure below, stop whatever this call started (its exit status stays non-zero).
  trap 'rc=$?; if (( rc != 0 )); then echo "local_stack: start failed; stopping what was started" >&2; stop; fi' EXIT
  # shellcheck disable=SC1091
  source "$STACK/env.sh"
  launch s3 "$S3_PORT" "$VENV_BIN/moto_server" -H "$HOST" -p "$S3_PORT"
  wait_port s3 "$S3_PORT"
  "$VENV_BIN/python" - "$BUCKET" <<'EOF'
import sys, boto3
s3 = boto3.client("s3")
if sys.argv[1] not in [b["Name"] for b in s3.list_buckets().get("Buckets", [])]:
    s3.create_bucket(Bucket=sys.argv[1])
EOF
  # No job-execution workers: the stack needs tracking, the registry and artifacts only (the workers
  # are several extra Python processes that slow start and stop down).
  launch mlflow "$MLFLOW_PORT" env MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false "$VENV_BIN/mlflow" server --host "$HOST" --port "$MLFLOW_PORT" --workers 1 \
    --backend-store-uri "sqlite:///$STACK/mlflow.db" --artifacts-destination "$STACK/mlartifacts"
  # The Ray head inherits the S3 and MLflow variables, so every job and replica it runs can reach them,
  # and HSIVAR_WORK_DIR, so jobs keep their outputs in $WORK_DIR rather than in the temporary copy of
  # their working directory; it finds this virtual environment's `python` first on PATH (job
  # entrypoints say `python jobs/…`).
  # --block keeps `ray start` in the foreground as the parent of the head's processes (it stops them
  # on SIGTERM); everything this Ray instance runs stays in the session `launch` creates.
  launch ray "$DASHBOARD_PORT" env RAY_ADDRESS= HSIVAR_WORK_DIR="$WORK_DIR" PATH="$VENV_BIN:$PATH" \
    "$VENV_BIN/ray" start --head --block --node-ip-address "$HOST" \
    --port "$RAY_PORT" --dashboard-host "$HOST" --dashboard-port "$DASHBOARD_PORT" \
    --ray-client-server-port "$CLIENT_PORT" --dashboard-agent-listen-port "$AGENT_PORT" \
    --metrics-export-port "$METRICS_PORT" --temp-dir "$RAY_TMP" --num-cpus "$RAY_CPUS" \
    --object-store-memory "$OBJECT_STORE_BYTES" \
    --disable-usage-stats
  wait_port mlflow "$MLFLOW_PORT"
  wait_port ray "$DASHBOARD_PORT"
  trap - EXIT
  echo "local_stack: started; state in $STACK. Export this environment (or: eval \"\$($0 env)\"):"
  cat "$STACK/env.sh"
}

session_pids() {  # session_pids SID -> the pids of every process in session SID (launch gives each service its own)
  ps -eo pid=,sid= | awk -v s="$1" '$2 == s {print $1}'
}

stop() {
  # SIGTERM every recorded process at once (each stops its own children), then wait for everything in
  # its session (launch starts each service with setsid; Ray's workers have their own process groups
  # but stay in that session): SIGTERM the whole session after 10 s, SIGKILL it after 25 s.
  local name pidfile pid waited left
  local -A pids=()
  for name in ray mlflow s3; do
    pidfile="$STACK/$name.pid"
    [[ -f "$pidfile" ]] || continue
    pids[$name]="$(cat "$pidfile")"
    kill -TERM "${pids[$name]}" 2>/dev/null || true
  done
  for name in "${!pids[@]}"; do
    pid="${pids[$name]}" waited=0
    while left="$(session_pids "$pid")" && [[ -n "$left" ]]; do
      if (( waited == 20 )); then kill -TERM $left 2>/dev/null || true; fi
      if (( waited >= 50 )); then kill -KILL $left 2>/dev/null || true; fi
      (( waited >= 60 )) && { echo "local_stack: $name: processes $left did not exit" >&2; break; }
      sleep 0.5; waited=$((waited + 1))
    done
    rm -f "$STACK/$name.pid"
    echo "local_stack: $name stopped"
  done
  rm -f "$RAY_TMP/ray_current_cluster"  # `ray start` records the address there; the cluster is gone
}

status() {
  local rc=0
  for svc in "s3:$S3_PORT" "mlflow:$MLFLOW_PORT" "ray:$DASHBOARD_PORT"; do
    local name="${svc%%:*}" port="${svc##*:}"
    if alive "$name" && port_open "$port"; then
      echo "$name: running (pid $(cat "$STACK/$name.pid"), $HOST:$port)"
    else
      echo "$name: stopped"; rc=3
    fi
  done
  return $rc
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  env) [[ -f "$STACK/env.sh" ]] || write_env; cat "$STACK/env.sh" ;;
  *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
