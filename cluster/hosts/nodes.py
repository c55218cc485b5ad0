"""What runs on each host: `ray start` command lines and their environment, as KubeRay's pods
get them, and Redis for GCS fault tolerance.

Every host has its own network stack, so Ray's default ports (GCS 6379, dashboard 8265, Serve
8000, HAProxy 8404/9101) are each host's own and clash with nothing on this machine. What
the hosts share is the filesystem: each node gets its own temp dir, HAProxy's files go under
the run's directory (Serve's default, /tmp/haproxy-serve, is every Serve's on the machine),
and they all run this checkout's virtualenv (`ray` beside `sys.executable`).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from serve import fast_ingress

GCS_PORT = 6379
DASHBOARD_PORT = 8265
SERVE_PORT = 8000
REDIS_PORT = 6379
# Per node: small, this is a test cluster on one machine.
OBJECT_STORE_BYTES = 200_000_000
# What KubeRay injects on worker pods when GCS fault tolerance is on: a worker waits this
# long for a restarted head (Ray's default, 60 s, is what the head itself waits).
FT_WORKER_RECONNECT_S = 600
# More environment for every node (an experiment with a Ray or Serve setting, e.g.
# RAY_SERVE_HAPROXY_TIMEOUT_SERVER_S); set before `up`.
EXTRA_ENV: dict[str, str] = {}


@dataclass(frozen=True)
class GcsFaultTolerance:
    """GCS fault tolerance, as KubeRay's `gcsFaultToleranceOptions` sets it up: the head keeps
    the cluster's tables in an external Redis (`RAY_REDIS_ADDRESS`, the password as
    `--redis-password`), under a namespace of this cluster's own
    (`RAY_external_storage_namespace`, on every node), and workers wait longer for a head
    that restarts (`RAY_gcs_rpc_server_reconnect_timeout_s`)."""

    redis_address: str  # host:port
    password: str
    namespace: str
    worker_reconnect_s: int = FT_WORKER_RECONNECT_S


def venv_bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def node_env(run_dir: Path, token_path: Path, ft: GcsFaultTolerance | None, head: bool) -> dict:
    """The environment of a node's `ray start`: this machine's, less any Ray address or Serve
    tuning the caller had, plus the cluster's settings."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RAY_", "ZS_")) and k not in ("CUDA_VISIBLE_DEVICES",)
    }
    venv = str(Path(sys.executable).parent)
    env.update(
        PATH=f"{venv}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        RAY_USAGE_STATS_ENABLED="0",
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        # Token authentication with a token of this cluster's own (the default
        # ~/.ray/auth_token is every Ray's of this user on this machine).
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token_path),
        # Serve's fast ingress on every node, as the image and the RayService pods have it
        # (and without fast_ingress.LOCAL_ENV: these are hosts, and HAProxy on one must drop
        # a stopping replica on another before it goes).
        **fast_ingress.ENV,
        **haproxy_paths(run_dir),
    )
    env.update(EXTRA_ENV)
    if ft is not None:
        env["RAY_external_storage_namespace"] = ft.namespace
        if head:
            env["RAY_REDIS_ADDRESS"] = ft.redis_address
        else:
            env["RAY_gcs_rpc_server_reconnect_timeout_s"] = str(ft.worker_reconnect_s)
    return env


def haproxy_paths(run_dir: Path) -> dict[str, str]:
    """HAProxy's config, sockets and state under the run's directory (Serve adds a directory
    per node below it)."""
    base = run_dir / "haproxy"
    return {
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(base / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(base / "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(base),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(base / "server-state"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(base / "metrics.sock"),
    }


def _common(address: str, temp_dir: Path) -> list[str]:
    # --block: `ray start` stays in the foreground and exits (ending the node's other
    # processes) when one of them dies, as a pod's main process does.
    return [
        venv_bin("ray"),
        "start",
        "--block",
        f"--node-ip-address={address}",
        f"--temp-dir={temp_dir}",
        f"--object-store-memory={OBJECT_STORE_BYTES}",
        "--disable-usage-stats",
        "--log-style=record",
    ]


def head_command(address: str, temp_dir: Path, ft: GcsFaultTolerance | None) -> list[str]:
    """The head as on KubeRay: no CPUs and no GPUs (control plane, Serve controller and
    proxy, drivers), the dashboard on every interface (Serve's REST API)."""
    cmd = [
        *_common(address, temp_dir),
        "--head",
        f"--port={GCS_PORT}",
        "--num-cpus=0",
        "--num-gpus=0",
        "--include-dashboard=true",
        "--dashboard-host=0.0.0.0",
        f"--dashboard-port={DASHBOARD_PORT}",
    ]
    if ft is not None:
        cmd.append(f"--redis-password={ft.password}")
    return cmd


def worker_command(
    head: str, address: str, temp_dir: Path, num_cpus: int, num_gpus: int
) -> list[str]:
    """A worker: `num_gpus` declared GPUs (placement is real; without CUDA the model runs on
    the CPU, zeroshot.devices.resolve_device)."""
    return [
        *_common(address, temp_dir),
        f"--address={head}:{GCS_PORT}",
        f"--num-cpus={num_cpus}",
        f"--num-gpus={num_gpus}",
    ]


def redis_command(address: str, password: str, work_dir: Path) -> list[str]:
    """An in-memory Redis on its own host (nothing saved to disk: the head's restarts are the
    fault here, not Redis's)."""
    return [
        "redis-server",
        "--bind", address,
        "--port", str(REDIS_PORT),
        "--requirepass", password,
        "--save", "",
        "--appendonly", "no",
        "--dir", str(work_dir),
        "--daemonize", "no",
        "--loglevel", "warning",
    ]  # fmt: skip
