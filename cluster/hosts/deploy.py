"""The Serve app on a host cluster, deployed as KubeRay deploys a RayService's
`serveConfigV2`: serve/config.yaml PUT to the head's dashboard (Serve's REST API, what
`serve deploy` does), a proxy (HAProxy) on every node, replicas on the worker hosts only."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

import yaml

from cluster.hosts.cluster import Host, HostCluster
from cluster.hosts.nodes import SERVE_PORT
from cluster.local import localctl
from cluster.render import SERVE_CONFIG


def serve_config(
    model: str,
    replicas: int,
    *,
    backend: str = "torch",
    null_pairs_per_s: float | None = None,
    dtype: str | None = None,
    **args: Any,
) -> dict:
    """serve/config.yaml for a cluster of `replicas` one-GPU worker hosts: the model given,
    device `auto` (a declared GPU CUDA cannot drive runs the model on the CPU), and `replicas`
    classifier and ingress replicas at all times, so each worker host holds one of each (a
    host lost leaves the other's). Proxies on every node at 0.0.0.0:8000, as on KubeRay.
    `args`: more `AppConfig` fields."""
    base = yaml.safe_load(SERVE_CONFIG.read_text())
    out = localctl.local_serve_config(
        base, port=SERVE_PORT, model=model, device="auto", dtype=dtype, num_gpus=1,
        max_replicas=replicas,
    )  # fmt: skip
    # local_serve_config makes it one proxy on one machine's loopback; these are hosts.
    out["proxy_location"] = "EveryNode"
    out["http_options"]["host"] = "0.0.0.0"
    (app,) = out["applications"]
    app["args"]["classifier"]["min_replicas"] = replicas
    app["args"]["ingress"]["min_replicas"] = replicas
    app["args"]["backend"] = backend
    if null_pairs_per_s is not None:
        app["args"]["null_pairs_per_s"] = null_pairs_per_s
    app["args"].update(args)
    return out


def deploy(cluster: HostCluster, config: dict) -> None:
    """PUT the config to the head's Serve REST API (returns once accepted)."""
    req = urllib.request.Request(
        f"{cluster.dashboard_url}/api/serve/applications/",
        data=json.dumps(config).encode(),
        method="PUT",
        headers={"Content-Type": "application/json", **cluster.auth_headers()},
    )
    with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310 (our host's address)
        if resp.status != 200:
            raise RuntimeError(f"serve deploy answered {resp.status}: {resp.read()[:500]!r}")


def wait_serving(cluster: HostCluster, hosts: list[Host], timeout_s: float = 180) -> None:
    """Until the app runs and `/healthz` is 200 through the proxy of each of `hosts`."""
    deadline = time.monotonic() + timeout_s
    for host in hosts:
        left = max(1.0, deadline - time.monotonic())
        code = localctl.wait_serve(
            cluster.dashboard_url, cluster.serve_url(host), left, cluster.auth_headers()
        )
        if code != 0:
            raise TimeoutError(f"the app does not answer through {host.name}'s proxy")


def replica_hosts(cluster: HostCluster) -> dict[str, list[str]]:
    """Deployment name -> the addresses of the hosts its running replicas are on."""
    status = localctl.serve_status(cluster.dashboard_url, cluster.auth_headers())
    ips = {n["node_id"]: n["node_ip"] for n in cluster.alive_nodes()}
    out = {}
    for app in (status.get("applications") or {}).values():
        for name, dep in (app.get("deployments") or {}).items():
            out[name] = sorted(
                ips.get(r["node_id"], "?") for r in dep.get("replicas") or []
                if r.get("state") == "RUNNING"
            )  # fmt: skip
    return out


def healthz(url: str, timeout: float = 5.0) -> int:
    """The status of GET /healthz at `url` (0: no HTTP answer)."""
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=timeout) as resp:  # noqa: S310
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def shutdown(cluster: HostCluster, timeout_s: float = 60) -> None:
    """Delete every Serve application (what `serve shutdown` does) and wait until none is left:
    the replicas' GPUs are free for a job on the same cluster."""
    req = urllib.request.Request(
        f"{cluster.dashboard_url}/api/serve/applications/",
        method="DELETE",
        headers=cluster.auth_headers(),
    )
    with urllib.request.urlopen(req, timeout=60):  # noqa: S310 (our host's address)
        pass
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = localctl.serve_status(cluster.dashboard_url, cluster.auth_headers())
        if not status.get("applications"):
            return
        time.sleep(1.0)
    raise TimeoutError("the Serve applications are still there")
