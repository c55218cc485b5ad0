"""The processes tests start: `zeroshot serve` as a user runs it (`Server`), and finding
processes by command line when any of them may exit meanwhile.

Listing children and then reading each one's command line races with a child that exits in
between (`psutil.NoSuchProcess` from `cmdline()`): such a child is simply not there any more.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from benchmarks.common import stop_group


def children_named(pid: int, needle: str) -> list[psutil.Process]:
    """Live descendants of `pid` whose command line contains `needle` (none if `pid` is gone)."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    found = []
    for child in children:
        try:
            if needle in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:  # exited (or became unreadable) since the listing
            continue
    return found


def listeners(port: int) -> list[str]:
    """What still listens on TCP `port`, as 'pid name' (pid None when the socket's owner is not
    ours to see). Connections in TIME_WAIT after a server closed them are not listeners: a
    bare bind() fails on them, yet a restarted server (SO_REUSEADDR) binds fine."""
    found = []
    for c in psutil.net_connections(kind="tcp"):
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port:
            try:
                name = psutil.Process(c.pid).name() if c.pid else "?"
            except psutil.Error:
                name = "?"
            found.append(f"{c.pid} {name}")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`zeroshot serve` in its own process (and process group), as a user starts it."""

    def __init__(self, models: list[str], log: Path, *args: str, env: dict | None = None):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        cmd = [sys.executable, "-m", "zeroshot", "serve", "--dtype", "float32",
               "--port", str(self.port), "--num-cpus", "2", *args]  # fmt: skip
        for model in models:
            cmd += ["--model", model]
        self.stdout = log.with_suffix(".out")
        with open(self.stdout, "w") as out, open(log, "w") as err:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=err, start_new_session=True,
                                         env={**os.environ, **(env or {})})  # fmt: skip
        self.printed = self._wait_for("metrics: ", timeout=240)

    def _wait_for(self, marker: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.stdout.read_text()
            if marker in text:
                return text
            if self.proc.poll() is not None:
                break
            time.sleep(0.5)
        self.stop()
        pytest.fail(f"zeroshot serve did not start:\n{self.stdout.read_text()}\n"
                    f"{self.log.read_text()[-3000:]}")  # fmt: skip

    def stop(self) -> None:
        stop_group(self.proc)  # Ctrl-C: serve.shutdown(), ray.shutdown()
