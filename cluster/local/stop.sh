#!/usr/bin/env bash
# Stop the local cluster that start.sh started, and only it.
#
#   cluster/local/stop.sh [--clean]
#
# `ray stop` is not used: it ends every Ray process of the user on this machine, including
# clusters that are none of ours. Instead this ends the processes in the sessions recorded by
# start.sh (gcs_server, raylets, dashboard, agents, Serve and Data workers all inherit the
# session of their `ray start`), plus any Ray process whose command line names this cluster's
# temp dir. SIGTERM first, SIGKILL after a grace period; exit 1 if anything survives.
# --clean also deletes the temp dir (logs included).
set -euo pipefail
# shellcheck source=env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

clean=0
grace=${ZS_STOP_GRACE_S:-5}
for arg in "$@"; do
  case "$arg" in
    --clean) clean=1 ;;
    -h|--help) awk 'NR>1 && /^#/ {sub(/^# ?/, ""); print; next} NR>1 {exit}' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

sids=()
if [ -d "$ZS_STATE_DIR" ]; then
  for f in "$ZS_STATE_DIR"/*.sid; do
    [ -e "$f" ] || continue
    sid=$(tr -dc '0-9' < "$f")
    [ -n "$sid" ] && [ "$sid" -gt 1 ] && sids+=("$sid")
  done
fi

# Our processes: members of a recorded session, or Ray processes naming our temp dir.
cluster_pids() {
  local pid sid stat args s
  ps -eo pid=,sid=,stat=,args= | while read -r pid sid stat args; do
    [ "$pid" = "$$" ] && continue
    case "$stat" in Z*) continue ;; esac  # exited, waiting to be reaped: nothing to stop
    for s in "${sids[@]+"${sids[@]}"}"; do
      if [ "$sid" = "$s" ]; then
        echo "$pid"
        continue 2
      fi
    done
    case "$args" in
      *"$ZS_RAY_TMP/"*ray*|*ray*"$ZS_RAY_TMP/"*) echo "$pid" ;;
    esac
  done
}

mapfile -t pids < <(cluster_pids)
if [ "${#pids[@]}" -eq 0 ]; then
  zs_log "no processes of the local cluster ($ZS_RAY_TMP) are running"
else
  zs_log "stopping ${#pids[@]} processes of the local cluster ($ZS_RAY_TMP)"
  kill -TERM "${pids[@]}" 2> /dev/null || true
  for _ in $(seq 1 $((grace * 4))); do
    mapfile -t pids < <(cluster_pids)
    [ "${#pids[@]}" -eq 0 ] && break
    sleep 0.25
  done
  if [ "${#pids[@]}" -gt 0 ]; then
    zs_log "${#pids[@]} processes ignored SIGTERM for ${grace}s; sending SIGKILL"
    kill -KILL "${pids[@]}" 2> /dev/null || true
    for _ in $(seq 1 20); do
      mapfile -t pids < <(cluster_pids)
      [ "${#pids[@]}" -eq 0 ] && break
      sleep 0.25
    done
  fi
fi

mapfile -t pids < <(cluster_pids)
if [ "${#pids[@]}" -gt 0 ]; then
  zs_log "still running: ${pids[*]}"
  exit 1
fi
rm -f "$ZS_STATE_DIR"/*.sid "$ZS_STATE_DIR/cluster.env"
if [ "$clean" = 1 ]; then
  rm -rf "$ZS_RAY_TMP"
fi
zs_log "local cluster stopped"
