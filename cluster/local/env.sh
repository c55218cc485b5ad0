# shellcheck shell=bash
# Settings shared by the local multi-node cluster scripts (sourced, not run).
#
# Every port and the temp dir derive from two bases so that this cluster never collides with
# a Ray started with the defaults (6379, 8265, 10001, 8000) or with another copy of these
# scripts started with other bases. Override any ZS_* variable from the environment:
#
#   ZS_PORT_BASE=7390 ZS_RAY_TMP=/tmp/zsr-other cluster/local/start.sh 2
#
# Port map (B = ZS_PORT_BASE, W = ZS_WORKER_PORT_BASE, node i = 0 for the head, 1..N workers):
#   B       GCS                       B+1  dashboard + job/Serve REST API
#   B+2     Ray client server         B+3  Serve HTTP (proxy on the head only)
#   B+10+10i .. B+15+10i  node i: node manager, object manager, dashboard agent (http, grpc),
#                         runtime-env agent, metrics export
#   W+200i .. W+200i+199  node i: worker processes (min/max worker port)

ZS_PORT_BASE=${ZS_PORT_BASE:-6390}
ZS_WORKER_PORT_BASE=${ZS_WORKER_PORT_BASE:-23000}
ZS_HOST=${ZS_HOST:-127.0.0.1}

# Short on purpose: Ray puts unix sockets under it (session_*/sockets/plasma_store), and a
# socket path may not exceed 107 bytes.
ZS_RAY_TMP=${ZS_RAY_TMP:-/tmp/zsray-$(id -u)-${ZS_PORT_BASE}}

ZS_GCS_PORT=$((ZS_PORT_BASE))
ZS_DASHBOARD_PORT=$((ZS_PORT_BASE + 1))
ZS_CLIENT_PORT=$((ZS_PORT_BASE + 2))
ZS_SERVE_PORT=${ZS_SERVE_PORT:-$((ZS_PORT_BASE + 3))}

ZS_GCS_ADDRESS="${ZS_HOST}:${ZS_GCS_PORT}"
ZS_DASHBOARD_URL="http://${ZS_HOST}:${ZS_DASHBOARD_PORT}"
ZS_SERVE_URL="http://${ZS_HOST}:${ZS_SERVE_PORT}"

# Per-node object store (bytes): small, this is a test cluster on one machine.
ZS_OBJECT_STORE_BYTES=${ZS_OBJECT_STORE_BYTES:-200000000}

# Where the scripts keep their state: one file per node with the session id of its processes.
ZS_STATE_DIR="${ZS_RAY_TMP}/state"

ZS_LOCAL_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ZS_REPO_ROOT=$(cd "${ZS_LOCAL_DIR}/../.." && pwd)
ZS_PYTHON=${ZS_PYTHON:-python}

export RAY_USAGE_STATS_ENABLED=0

# Token authentication (on by default for `ray start --head` since Ray 2.5x) with a token of
# this cluster's own, kept in its temp dir: the default ~/.ray/auth_token is shared by every
# Ray of the user on this machine, and a worker or driver must present the head's token.
# start.sh writes the token; every script (and zeroshot score, serve deploy) reads it from
# these variables. ZS_RAY_AUTH=disabled turns authentication off for this cluster.
if [ "${ZS_RAY_AUTH:-token}" = "disabled" ]; then
  export RAY_AUTH_MODE=disabled
  unset RAY_AUTH_TOKEN_PATH
else
  export RAY_AUTH_MODE=token
  export RAY_AUTH_TOKEN_PATH="${ZS_RAY_TMP}/auth_token"
fi
unset RAY_AUTH_TOKEN

# node_ports I -> "node_manager object_manager agent_http agent_grpc runtime_env metrics"
zs_node_ports() {
  local base=$((ZS_PORT_BASE + 10 + 10 * $1))
  echo "$base $((base + 1)) $((base + 2)) $((base + 3)) $((base + 4)) $((base + 5))"
}

zs_log() { printf '[zs-local] %s\n' "$*" >&2; }
