"""Running the image as its README does: the serving container's options and its wait for
`/healthz` (the test and the benchmark share them, so they measure what they assert)."""

from __future__ import annotations

import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from cluster.image import podman

# The image's HF_HOME (cluster/Dockerfile) and the port of its CMD.
HF_HOME = "/models/hf"
PORT = 8000


def shm_size() -> str:
    """/dev/shm for Ray's object store: Ray wants 30% of the memory it sees (the host's, in a
    container without a memory limit) and falls back to /tmp, slower, when /dev/shm is smaller
    (Docker's and podman's default is 64 MB). tmpfs takes memory only as it is used."""
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return f"{int(pages * 0.35) // 2**20}m"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serving_args(
    hf_home: str | Path, host_port: int, env: dict[str, str] | None = None
) -> list[str]:
    """`podman run` options for the image's own CMD (`zeroshot serve` on 0.0.0.0:8000): its
    port published on the host's loopback, the weight cache mounted at HF_HOME, offline."""
    args = [
        "--shm-size",
        shm_size(),
        "--publish",
        f"127.0.0.1:{host_port}:{PORT}",
        "--volume",
        f"{hf_home}:{HF_HOME}",
        "--env",
        "HF_HUB_OFFLINE=1",
    ]
    for name, value in (env or {}).items():
        args += ["--env", f"{name}={value}"]
    return args


def status(name: str) -> str:
    """The container's state (running, exited, ...), 'gone' when there is none by that name."""
    proc = podman.run("inspect", "--format", "{{.State.Status}}", name, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else "gone"


def healthz(url: str, timeout_s: float = 5) -> int | None:
    """GET URL/healthz: its status code, None when nothing answered."""
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=timeout_s) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, urllib.error.URLError):
        return None


def wait_healthy(url: str, timeout_s: float, containers: Sequence[str] = ()) -> float:
    """Poll `url`/healthz every 0.1 s until it answers 200; returns the seconds waited. Fails
    at once when one of `containers` is no longer running (its log says why)."""
    start = time.monotonic()
    while True:
        if healthz(url, timeout_s=2) == 200:
            return time.monotonic() - start
        for name in containers:
            state = status(name)
            if state != "running":
                raise RuntimeError(f"container {name} is {state}:\n{podman.logs(name)[-3000:]}")
        if time.monotonic() - start > timeout_s:
            logs = "".join(podman.logs(n)[-3000:] for n in containers)
            raise TimeoutError(f"{url}/healthz not 200 within {timeout_s:.0f} s\n{logs}")
        time.sleep(0.1)
