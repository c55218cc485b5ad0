#!/usr/bin/env bash
# Deploy serve/config.yaml on the local cluster with `serve deploy` (dashboard REST API), then
# wait until the app runs and answers /healthz.
#
#   cluster/local/deploy.sh [--model ID_OR_PATH] [--revision R] [--num-gpus F] [--device D]
#                           [--dtype D] [--max-replicas N] [--config FILE] [--timeout S]
#
# The config deployed is serve/config.yaml (or --config) adapted to this cluster by
# localctl.py serve-config: Serve HTTP on $ZS_SERVE_PORT with one proxy on the head,
# the model/device/dtype overridden when given, the classifier's num_gpus set (default: 1 when
# the workers have GPUs, else 0), autoscaling capped at --max-replicas (default 2). With fake
# GPUs (start.sh --num-gpus on a machine without CUDA) the device defaults to cpu.
# The generated config is kept in $ZS_RAY_TMP/serve-config.yaml.
set -euo pipefail
# shellcheck source=env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

config="$ZS_REPO_ROOT/serve/config.yaml"
model=""
revision=""
device=""
dtype=""
num_gpus=""
max_replicas=2
timeout=180
while [ $# -gt 0 ]; do
  case "$1" in
    --model) model=${2:?}; shift 2 ;;
    --revision) revision=${2:?}; shift 2 ;;
    --device) device=${2:?}; shift 2 ;;
    --dtype) dtype=${2:?}; shift 2 ;;
    --num-gpus) num_gpus=${2:?}; shift 2 ;;
    --max-replicas) max_replicas=${2:?}; shift 2 ;;
    --config) config=${2:?}; shift 2 ;;
    --timeout) timeout=${2:?}; shift 2 ;;
    -h|--help) awk 'NR>1 && /^#/ {sub(/^# ?/, ""); print; next} NR>1 {exit}' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
if [ ! -f "$ZS_STATE_DIR/cluster.env" ]; then
  echo "no local cluster is running here (start it with cluster/local/start.sh)" >&2
  exit 1
fi
# shellcheck disable=SC1091
source "$ZS_STATE_DIR/cluster.env"

if [ -z "$num_gpus" ]; then
  num_gpus=$([ "${ZS_WORKER_GPUS:-0}" -gt 0 ] && echo 1 || echo 0)
fi
if [ -z "$device" ]; then
  device=$([ "${ZS_GPUS_FAKE:-0}" = 1 ] || [ "$num_gpus" = 0 ] && echo cpu || echo auto)
fi

generated="$ZS_RAY_TMP/serve-config.yaml"
args=(serve-config "$config" "$generated" --port "$ZS_SERVE_PORT" --device "$device"
      --num-gpus "$num_gpus" --max-replicas "$max_replicas")
[ -n "$model" ] && args+=(--model "$model")
[ -n "$revision" ] && args+=(--revision "$revision")
[ -n "$dtype" ] && args+=(--dtype "$dtype")
"$ZS_PYTHON" "$ZS_LOCAL_DIR/localctl.py" "${args[@]}" > /dev/null

zs_log "serve deploy $generated -a $ZS_DASHBOARD_URL (device $device, num_gpus $num_gpus)"
serve deploy "$generated" -a "$ZS_DASHBOARD_URL"
"$ZS_PYTHON" "$ZS_LOCAL_DIR/localctl.py" wait-serve "$ZS_DASHBOARD_URL" "$ZS_SERVE_URL" \
  --timeout "$timeout"
echo "Serve app up: $ZS_SERVE_URL (POST / or /v1/classify; GET /healthz, /v1/info)"
