#!/usr/bin/env bash
# Run the offline job (zeroshot score) on the local cluster: the driver runs here and joins
# the cluster with --address; Ray Data's tasks and scoring actors run on the worker raylets.
#
#   cluster/local/score.sh INPUT OUTPUT --labels "a,b,c" [any other zeroshot score option]
#
# With fake GPUs (start.sh --num-gpus on a machine without CUDA) --device cpu is added unless
# a --device is given, so that actors placed on a "GPU" run the model on CPU.
set -euo pipefail
# shellcheck source=env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

case "${1:-}" in
  -h|--help|"") awk 'NR>1 && /^#/ {sub(/^# ?/, ""); print; next} NR>1 {exit}' "$0"; exit 0 ;;
esac
if [ ! -f "$ZS_STATE_DIR/cluster.env" ]; then
  echo "no local cluster is running here (start it with cluster/local/start.sh)" >&2
  exit 1
fi
# shellcheck disable=SC1091
source "$ZS_STATE_DIR/cluster.env"

extra=()
if [ "${ZS_GPUS_FAKE:-0}" = 1 ] && ! printf '%s\n' "$@" | grep -q -- '^--device'; then
  extra+=(--device cpu)
fi
zs_log "zeroshot score $* ${extra[*]+"${extra[*]}"} --address $ZS_GCS_ADDRESS"
exec "$ZS_PYTHON" -m zeroshot score "$@" ${extra[@]+"${extra[@]}"} --address "$ZS_GCS_ADDRESS"
