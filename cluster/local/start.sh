#!/usr/bin/env bash
# Start a local multi-node Ray cluster on this machine: one head and N worker raylets, each
# with its own ports and temp dir (see env.sh), the dashboard on (for `serve deploy` and jobs).
#
#   cluster/local/start.sh [N_WORKERS] [--num-gpus G] [--num-cpus C]
#
#   N_WORKERS     worker raylets to start (default 2)
#   --num-gpus G  GPUs each worker advertises (default 0). On a machine without GPUs this fakes
#                 them, so that GPU placement (num_gpus per replica or actor) can be exercised;
#                 the model then runs on CPU (deploy.sh passes device=cpu).
#   --num-cpus C  logical CPUs each worker advertises (default 4; oversubscribing a small
#                 machine is fine for a test cluster)
#
# The head advertises no CPUs and no GPUs, as on Kubernetes: no replica or task lands there,
# only Ray's control plane, the Serve controller and proxy, and drivers.
# Every process of node X runs in its own session; its id is kept in $ZS_RAY_TMP/state/X.sid
# so that stop.sh ends exactly these processes and nothing else. On any failure this script
# stops what it started.
set -euo pipefail
# shellcheck source=env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

n_workers=2
num_gpus=0
num_cpus=4
while [ $# -gt 0 ]; do
  case "$1" in
    --num-gpus) num_gpus=${2:?--num-gpus needs a value}; shift 2 ;;
    --num-gpus=*) num_gpus=${1#*=}; shift ;;
    --num-cpus) num_cpus=${2:?--num-cpus needs a value}; shift 2 ;;
    --num-cpus=*) num_cpus=${1#*=}; shift ;;
    -h|--help) awk 'NR>1 && /^#/ {sub(/^# ?/, ""); print; next} NR>1 {exit}' "$0"; exit 0 ;;
    [0-9]*) n_workers=$1; shift ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
for v in "$n_workers" "$num_gpus" "$num_cpus"; do
  [[ "$v" =~ ^[0-9]+$ ]] || { echo "counts must be whole numbers (got '$v')" >&2; exit 2; }
done

if compgen -G "${ZS_STATE_DIR}/*.sid" > /dev/null; then
  echo "a local cluster already has state in ${ZS_STATE_DIR}; run cluster/local/stop.sh first" >&2
  exit 1
fi

ports=("$ZS_GCS_PORT" "$ZS_DASHBOARD_PORT" "$ZS_CLIENT_PORT" "$ZS_SERVE_PORT")
for i in $(seq 0 "$n_workers"); do
  read -r -a node_ports <<< "$(zs_node_ports "$i")"
  ports+=("${node_ports[@]}")
done
if ! "$ZS_PYTHON" "$ZS_LOCAL_DIR/localctl.py" check-ports "${ports[@]}"; then
  echo "pick other ports: ZS_PORT_BASE=NNNN $0 ..." >&2
  exit 1
fi

mkdir -p "$ZS_STATE_DIR"
chmod 700 "$ZS_RAY_TMP"
if [ "$RAY_AUTH_MODE" = "token" ] && [ ! -s "$RAY_AUTH_TOKEN_PATH" ]; then
  (umask 077 && "$ZS_PYTHON" -c 'import secrets; print(secrets.token_hex(32), end="")' \
    > "$RAY_AUTH_TOKEN_PATH")
fi
started=0
cleanup_on_error() {
  local rc=$?
  if [ "$started" = 1 ]; then
    zs_log "start failed (exit $rc); stopping what was started"
    "$ZS_LOCAL_DIR/stop.sh" >&2 || true
  fi
  exit "$rc"
}
trap cleanup_on_error ERR INT TERM

# start_node NAME ray-start-args... : run `ray start` in a new session, remember the session id.
start_node() {
  local name=$1
  shift
  started=1
  if ! setsid bash -c 'echo $$ > "$0"; exec ray start "$@"' "$ZS_STATE_DIR/$name.sid" "$@" \
      --disable-usage-stats --log-style record > "$ZS_STATE_DIR/$name.log" 2>&1; then
    zs_log "ray start failed for $name; its output:"
    tail -n 40 "$ZS_STATE_DIR/$name.log" >&2
    return 1
  fi
}

# node_args I : the ports and temp dir of node I.
node_args() {
  local nm om ah ag re me
  read -r nm om ah ag re me <<< "$(zs_node_ports "$1")"
  local wmin=$((ZS_WORKER_PORT_BASE + 200 * $1))
  echo "--node-manager-port=$nm --object-manager-port=$om --dashboard-agent-listen-port=$ah" \
       "--dashboard-agent-grpc-port=$ag --runtime-env-agent-port=$re --metrics-export-port=$me" \
       "--min-worker-port=$wmin --max-worker-port=$((wmin + 199))" \
       "--object-store-memory=$ZS_OBJECT_STORE_BYTES --temp-dir=$ZS_RAY_TMP/n$1"
}

zs_log "head: GCS $ZS_GCS_ADDRESS, dashboard $ZS_DASHBOARD_URL, temp dir $ZS_RAY_TMP"
# shellcheck disable=SC2046
start_node head --head \
  --port="$ZS_GCS_PORT" \
  --num-cpus=0 --num-gpus=0 \
  --include-dashboard=true --dashboard-host="$ZS_HOST" --dashboard-port="$ZS_DASHBOARD_PORT" \
  --ray-client-server-port="$ZS_CLIENT_PORT" \
  $(node_args 0)

# Workers join in parallel (each `ray start` takes a few seconds).
pids=()
for i in $(seq 1 "$n_workers"); do
  # shellcheck disable=SC2046
  start_node "worker$i" --address="$ZS_GCS_ADDRESS" \
    --num-cpus="$num_cpus" --num-gpus="$num_gpus" \
    $(node_args "$i") &
  pids+=($!)
done
for pid in "${pids[@]}"; do
  wait "$pid"
done

"$ZS_PYTHON" "$ZS_LOCAL_DIR/localctl.py" wait-nodes "$ZS_DASHBOARD_URL" $((n_workers + 1)) \
  --timeout 90
trap - ERR INT TERM

# What deploy.sh and score.sh need to know: are the GPUs real (CUDA) or only advertised?
fake=0
if [ "$num_gpus" -gt 0 ] && ! nvidia-smi -L > /dev/null 2>&1; then
  fake=1
fi
cat > "$ZS_STATE_DIR/cluster.env" <<EOF
ZS_N_WORKERS=$n_workers
ZS_WORKER_CPUS=$num_cpus
ZS_WORKER_GPUS=$num_gpus
ZS_GPUS_FAKE=$fake
EOF

cat <<EOF
local Ray cluster up: head + $n_workers workers ($num_cpus CPUs, $num_gpus GPUs each$([ "$fake" = 1 ] && echo ", fake"))
  RAY_ADDRESS=$ZS_GCS_ADDRESS            (drivers: zeroshot score ... --address $ZS_GCS_ADDRESS)
  dashboard / job API: $ZS_DASHBOARD_URL  (serve deploy -a $ZS_DASHBOARD_URL)
  Serve HTTP after deploy.sh: $ZS_SERVE_URL
  stop with: cluster/local/stop.sh
EOF
