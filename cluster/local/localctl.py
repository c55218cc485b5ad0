"""Helpers for the local multi-node cluster scripts (start.sh, deploy.sh, stop.sh).

Standard library and PyYAML only, so that the scripts work before Ray is even imported:

  localctl.py check-ports PORT...             exit 1 (naming them) if any port is taken
  localctl.py wait-nodes URL COUNT            wait until the dashboard at URL lists COUNT live nodes
  localctl.py serve-config IN OUT [options]   write a Serve config for this cluster from IN
  localctl.py wait-serve URL SERVE_URL        wait until every Serve app runs and answers /healthz
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml


def auth_headers() -> dict[str, str]:
    """The bearer token of this cluster (RAY_AUTH_MODE=token, token in RAY_AUTH_TOKEN_PATH)."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        return {}
    token = os.environ.get("RAY_AUTH_TOKEN")
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if not token and path and Path(path).is_file():
        token = Path(path).read_text().strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


def _get_json(url: str, timeout: float = 5.0, headers: dict[str, str] | None = None):
    # `headers`: a caller's own credentials (another cluster's token) instead of this
    # environment's.
    req = urllib.request.Request(url, headers=auth_headers() if headers is None else headers)
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (local URL)
        return json.loads(resp.read().decode())


def check_ports(ports: list[int], host: str = "127.0.0.1") -> list[int]:
    """The ports among `ports` that something already listens on (or that cannot be bound)."""
    taken = []
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            # as servers bind: a closed connection's TIME_WAIT does not make a port busy
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                taken.append(port)
                continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.2)
            if s.connect_ex((host, port)) == 0:
                taken.append(port)
    return taken


def live_nodes(dashboard: str, headers: dict[str, str] | None = None) -> list[dict]:
    """Alive nodes as the dashboard's state API lists them."""
    data = _get_json(f"{dashboard}/api/v0/nodes?limit=1000&detail=false", headers=headers)
    result = data.get("data", {}).get("result", {})
    rows = result.get("result", result) if isinstance(result, dict) else result
    return [n for n in rows if n.get("state") == "ALIVE"]


def wait_nodes(
    dashboard: str, count: int, timeout: float, headers: dict[str, str] | None = None
) -> int:
    deadline = time.monotonic() + timeout
    seen, last_err = -1, None
    while time.monotonic() < deadline:
        try:
            seen = len(live_nodes(dashboard, headers))
            if seen >= count:
                print(f"{seen} nodes alive")
                return 0
        except (OSError, urllib.error.URLError, ValueError) as exc:
            last_err = exc
        time.sleep(1.0)
    print(
        f"timed out after {timeout:.0f}s waiting for {count} live nodes at {dashboard} "
        f"(saw {seen}; last error: {last_err})",
        file=sys.stderr,
    )
    return 1


def local_serve_config(
    config: dict,
    *,
    port: int,
    model: str | None = None,
    revision: str | None = None,
    device: str | None = "cpu",
    dtype: str | None = None,
    num_gpus: float | None = None,
    max_replicas: int | None = None,
    max_batch_tokens: int | None = None,
) -> dict:
    """serve/config.yaml adapted to the local cluster, through the app's `args` only (they
    decide every deployment option).

    HTTP on `port` behind one proxy on the head (several proxies on one machine would all
    want the same port); the model, device and dtype overridden; the classifier asking for
    `num_gpus` (fake GPUs on a machine without one: that is why `device` defaults to "cpu",
    since the app maps an assigned GPU to CUDA otherwise); both deployments' replicas capped
    at `max_replicas` so a small machine is not oversubscribed.
    """
    out = json.loads(json.dumps(config))  # deep copy, plain types
    out["proxy_location"] = "HeadOnly"
    http = out.setdefault("http_options", {}) or {}
    http.update({"host": "127.0.0.1", "port": int(port)})
    out["http_options"] = http
    apps = out.get("applications") or []
    if not apps:
        raise SystemExit("the Serve config has no applications")
    for app in apps:
        args = app.setdefault("args", {}) or {}
        app["args"] = args
        if model is not None:
            args["model"] = model
            if revision is None:
                args.pop("revision", None)
        for key, value in (("revision", revision), ("device", device), ("dtype", dtype)):
            if value is not None:
                args[key] = value
        classifier = args.setdefault("classifier", {}) or {}
        args["classifier"] = classifier
        if num_gpus is not None:
            classifier["num_gpus"] = float(num_gpus)
        if max_replicas is not None:
            for part in ("classifier", "ingress"):
                settings = args.setdefault(part, {}) or {}
                args[part] = settings
                settings["max_replicas"] = min(int(settings.get("max_replicas", 1)), max_replicas)
                if "min_replicas" in settings:
                    settings["min_replicas"] = min(int(settings["min_replicas"]), max_replicas)
        if max_batch_tokens is not None:
            batching = args.setdefault("batching", {}) or {}
            args["batching"] = batching
            forward = batching.setdefault("forward", {}) or {}
            batching["forward"] = forward
            forward["max_batch_tokens"] = int(max_batch_tokens)
    return out


def serve_status(dashboard: str, headers: dict[str, str] | None = None) -> dict:
    return _get_json(f"{dashboard}/api/serve/applications/", headers=headers)


def wait_serve(
    dashboard: str, serve_url: str, timeout: float, headers: dict[str, str] | None = None
) -> int:
    """Wait until every application is RUNNING and GET {route_prefix}/healthz answers 200."""
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        try:
            status = serve_status(dashboard, headers)
            apps = status.get("applications") or {}
            states = {name: a.get("status") for name, a in apps.items()}
            failed = {
                n: a.get("message")
                for n, a in apps.items()
                if a.get("status") in ("DEPLOY_FAILED", "UNHEALTHY")
            }
            if failed:
                print(f"Serve application failed: {json.dumps(failed, indent=2)}", file=sys.stderr)
                return 1
            last = f"applications: {states}"
            if apps and all(s == "RUNNING" for s in states.values()):
                for app in apps.values():
                    prefix = (app.get("route_prefix") or "/").rstrip("/")
                    url = f"{serve_url}{prefix}/healthz"
                    with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310
                        if resp.status != 200:
                            raise OSError(f"{url} answered {resp.status}")
                print(f"Serve is up: {states}")
                return 0
        except (OSError, urllib.error.URLError, ValueError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(1.0)
    print(f"timed out after {timeout:.0f}s waiting for Serve ({last})", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("check-ports")
    p.add_argument("ports", nargs="+", type=int)

    p = sub.add_parser("wait-nodes")
    p.add_argument("dashboard")
    p.add_argument("count", type=int)
    p.add_argument("--timeout", type=float, default=60)

    p = sub.add_parser("serve-config")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--model")
    p.add_argument("--revision")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype")
    p.add_argument("--num-gpus", type=float)
    p.add_argument("--max-replicas", type=int)
    p.add_argument("--max-batch-tokens", type=int)

    p = sub.add_parser("wait-serve")
    p.add_argument("dashboard")
    p.add_argument("serve_url")
    p.add_argument("--timeout", type=float, default=120)

    args = parser.parse_args(argv)
    if args.cmd == "check-ports":
        taken = check_ports(args.ports)
        if taken:
            print(f"ports already in use: {taken}", file=sys.stderr)
            return 1
        return 0
    if args.cmd == "wait-nodes":
        return wait_nodes(args.dashboard, args.count, args.timeout)
    if args.cmd == "serve-config":
        config = yaml.safe_load(Path(args.input).read_text())
        out = local_serve_config(
            config,
            port=args.port,
            model=args.model,
            revision=args.revision,
            device=args.device or None,
            dtype=args.dtype,
            num_gpus=args.num_gpus,
            max_replicas=args.max_replicas,
            max_batch_tokens=args.max_batch_tokens,
        )
        Path(args.output).write_text(yaml.safe_dump(out, sort_keys=False))
        print(args.output)
        return 0
    if args.cmd == "wait-serve":
        return wait_serve(args.dashboard, args.serve_url, args.timeout)
    return 2


if __name__ == "__main__":
    sys.exit(main())
