"""Hosts on one machine: Linux network namespaces on one bridge, an address each.

Each host is a network namespace with one veth link to a bridge in the root namespace; the
bridge holds the subnet's first address, so this machine (tests, benchmarks, a browser) reaches
every host at its own address. Traffic between hosts crosses the bridge like a switch. Nothing
is routed or NATed beyond the subnet: hosts reach only each other and this machine.

Names carry the run's id (`zs<run>...`) and the subnet is one of 10.213.0.0/16's /24s that no
interface or route on this machine uses yet, picked under a lock, so that two runs at once do
not collide. Everything is removed by the names recorded here, never by a pattern.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SUPERNET = "10.213"
NETNS_DIR = Path("/run/netns")
# Held while a run picks its subnet and creates its bridge (two runs must not pick the same).
LOCK_FILE = Path("/tmp/zeroshot-hosts.lock")
# Interface names are at most 15 bytes (IFNAMSIZ - 1).
IFNAME_MAX = 15


class HostsUnavailable(RuntimeError):
    """This machine cannot make hosts (not root, no `ip netns`); the message says how to fix."""


def problem() -> str | None:
    """Why network namespaces cannot be made here, with the fix, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root: run as root (CI does), e.g. `sudo -E python ...`"
    if shutil.which("ip") is None:
        return "no `ip` command: apt-get install iproute2"
    if shutil.which("nsenter") is None:
        return "no `nsenter` command: apt-get install util-linux"
    probe = f"zsprobe{os.getpid()}"
    made = run_ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` fails here ({made.stderr.strip()}): needs CAP_SYS_ADMIN"
    run_ip("netns", "del", probe, check=False)
    return None


def run_ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip() or proc.returncode}")
    return proc


@contextlib.contextmanager
def subnet_lock() -> Iterator[None]:
    with open(LOCK_FILE, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def used_subnets() -> set[int]:
    """Third octets of 10.213.x.0/24 that an address or route on this machine already uses."""
    text = run_ip("-4", "-o", "addr").stdout + run_ip("-4", "route").stdout
    return {int(m) for m in re.findall(rf"\b{re.escape(SUPERNET)}\.(\d+)\.", text)}


def pick_subnet() -> int:
    """A free 10.213.x.0/24 (call under `subnet_lock`, and create the bridge before releasing)."""
    free = sorted(set(range(1, 255)) - used_subnets())
    if not free:
        raise RuntimeError(f"every {SUPERNET}.x.0/24 is in use on this machine")
    return random.choice(free)


def netns_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def link_exists(name: str) -> bool:
    return run_ip("link", "show", "dev", name, check=False).returncode == 0


def netns_inode(name: str) -> int | None:
    """The inode of namespace `name`: a process is in it when /proc/PID/ns/net has this inode."""
    try:
        return os.stat(NETNS_DIR / name).st_ino
    except OSError:
        return None


@dataclass(frozen=True)
class HostLink:
    """One host's place on the network."""

    netns: str  # the namespace (the host)
    veth: str  # the link's end on the bridge, in the root namespace
    address: str  # the host's IPv4 address


class Network:
    """The bridge of one run and the hosts on it."""

    def __init__(self, run_id: str, subnet: int):
        self.run_id, self.subnet = run_id, subnet
        self.bridge = f"zs{run_id}br"
        if len(self.bridge) > IFNAME_MAX:
            raise ValueError(f"run id {run_id!r} too long for interface names")

    @property
    def gateway(self) -> str:
        """This machine's address on the bridge."""
        return self.address(1)

    def address(self, index: int) -> str:
        return f"{SUPERNET}.{self.subnet}.{index}"

    def create_bridge(self) -> None:
        run_ip("link", "add", self.bridge, "type", "bridge")
        run_ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        run_ip("link", "set", self.bridge, "up")

    def link_of(self, name: str, index: int) -> HostLink:
        veth = f"zs{self.run_id}{name}"[:IFNAME_MAX]
        return HostLink(f"zs{self.run_id}-{name}", veth, self.address(index))

    def add_host(self, link: HostLink) -> None:
        """Create the namespace (if new) and plug it into the bridge at its address."""
        if not netns_exists(link.netns):
            run_ip("netns", "add", link.netns)
            run_ip("-n", link.netns, "link", "set", "lo", "up")
        self.plug(link)

    def plug(self, link: HostLink) -> None:
        """A new veth pair: `eth0` inside the host, `link.veth` on the bridge."""
        run_ip("link", "add", link.veth, "type", "veth", "peer", "name", "eth0", "netns",
               link.netns)  # fmt: skip
        run_ip("link", "set", link.veth, "master", self.bridge)
        run_ip("-n", link.netns, "addr", "add", f"{link.address}/24", "dev", "eth0")
        run_ip("-n", link.netns, "link", "set", "eth0", "up")
        run_ip("link", "set", link.veth, "up")

    @staticmethod
    def unplug(link: HostLink) -> None:
        """Remove the host's link (both ends): its packets go nowhere, as a pulled cable."""
        if link_exists(link.veth):
            run_ip("link", "del", link.veth)

    @staticmethod
    def set_link(link: HostLink, up: bool) -> None:
        """Bring the bridge end of a host's link down (a partition: the host keeps its address
        and its processes, and hears nothing) or up again."""
        run_ip("link", "set", link.veth, "up" if up else "down")

    @staticmethod
    def remove_host(link: HostLink) -> None:
        """Delete the namespace (its end of the link goes with it) and the bridge end. The
        processes in it must be gone first (`procs.kill_netns`): a namespace lives on while a
        process is in it."""
        Network.unplug(link)
        if netns_exists(link.netns):
            run_ip("netns", "del", link.netns)

    def remove_bridge(self) -> None:
        if link_exists(self.bridge):
            run_ip("link", "del", self.bridge)


def nsexec(netns: str) -> list[str]:
    """The words that run a command inside host `netns` (its network only: the filesystem, the
    users and the process table stay this machine's, as the Ray nodes share one venv)."""
    return ["nsenter", f"--net={NETNS_DIR / netns}", "--"]
