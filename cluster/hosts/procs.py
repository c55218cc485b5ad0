"""The processes of one host: every process whose network namespace is the host's.

A process is in a host when /proc/PID/ns/net is the host's namespace: every Ray process a host
starts (raylet, GCS, workers, HAProxy) inherits it, whoever its parent is now, and no process of
anyone else can be in it. Killing a host kills exactly these, by PID.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

from cluster.hosts.network import netns_inode


def pids_in(netns: str) -> list[int]:
    """Live (not zombie) processes in namespace `netns`. Tolerates processes that exit while
    being listed."""
    inode = netns_inode(netns)
    if inode is None:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}/ns/net").st_ino != inode:
                continue
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue  # gone meanwhile, or not ours to read
        if state != "Z":
            found.append(int(entry))
    return found


def signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def kill_netns(netns: str, grace_s: float = 0.0, timeout_s: float = 20.0) -> list[int]:
    """End every process in `netns`: SIGTERM and `grace_s` to exit, then SIGKILL (at once when
    `grace_s` is 0: a host that dies). Returns what is still alive after `timeout_s` (empty
    unless a process is stuck in the kernel)."""
    if grace_s > 0:
        signal_all(pids_in(netns), signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while pids_in(netns) and time.monotonic() < deadline:
            time.sleep(0.1)
    deadline = time.monotonic() + timeout_s
    while True:
        left = pids_in(netns)
        if not left or time.monotonic() > deadline:
            return left
        signal_all(left, signal.SIGKILL)  # again: a dying raylet may still fork a worker
        time.sleep(0.1)


def describe(pids: list[int]) -> list[str]:
    """`PID command line` of each, for messages."""
    out = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        out.append(f"{pid} {cmd[:160]}")
    return out
