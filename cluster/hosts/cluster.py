"""A Ray cluster of hosts on one machine: a head and N workers, each in its own network
namespace with its own address, optionally with GCS fault tolerance on a Redis host.

    with HostCluster(workers=2, gcs_ft=True) as cluster:   # up; down on exit, also on errors
        cluster.gcs_address                                # 10.213.x.10:6379
        cluster.exec(cluster.head, ["zeroshot", "score", ...])   # a command on the head host
        cluster.lose(cluster.workers[0]); cluster.restore(cluster.workers[0])
        cluster.partition(cluster.workers[1]); cluster.heal(cluster.workers[1])
        cluster.kill(cluster.head); cluster.start_node(cluster.head)

Every namespace, link, bridge and process it creates is recorded in `<run dir>/state.json`
before it is created, so `down()` (or `python -m cluster.hosts down RUN` from another shell,
after a crash) removes exactly those and nothing else.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster.hosts import nodes, procs
from cluster.hosts.network import HostLink, Network, nsexec, run_ip, subnet_lock
from cluster.hosts.network import pick_subnet as _pick_subnet
from cluster.local import localctl

RUN_ROOT = Path("/tmp")
RUN_PREFIX = "zsh"
# Host numbers on the subnet: .1 is this machine (the bridge).
REDIS_INDEX, HEAD_INDEX, FIRST_WORKER_INDEX = 2, 10, 11


@dataclass
class Host:
    """One host: its place on the network, its role, and the main process it runs now."""

    name: str  # head, w1, w2, ..., redis
    role: str  # head | worker | redis
    netns: str
    veth: str
    address: str
    boots: int = 0  # starts of its node so far (each gets a fresh temp dir)
    pid: int | None = None  # `ray start --block` (or redis-server) of the current boot

    @property
    def link(self) -> HostLink:
        return HostLink(self.netns, self.veth, self.address)


@dataclass
class State:
    """What a run created, written before each thing is created."""

    run_id: str
    run_dir: str
    subnet: int | None = None
    bridge: str | None = None
    owner_pid: int = field(default_factory=os.getpid)
    gcs_ft: dict | None = None
    hosts: dict[str, Host] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> State:
        data = json.loads(text)
        data["hosts"] = {k: Host(**v) for k, v in data.get("hosts", {}).items()}
        return cls(**data)


def new_run_id() -> str:
    # The pid says whose it is; two random hex digits keep a reused pid from colliding with
    # a leftover run. At most 9 characters, for interface names (15 bytes).
    return f"{os.getpid()}{secrets.token_hex(1)}"


class HostCluster:
    def __init__(
        self,
        workers: int = 2,
        *,
        worker_cpus: int = 3,
        worker_gpus: int = 1,
        gcs_ft: bool = False,
        run_root: Path = RUN_ROOT,
        state: State | None = None,
    ):
        if state is None:
            run_id = new_run_id()
            state = State(run_id=run_id, run_dir=str(run_root / f"{RUN_PREFIX}{run_id}"))
        self.state = state
        self.n_workers, self.worker_cpus, self.worker_gpus = workers, worker_cpus, worker_gpus
        self.want_gcs_ft = gcs_ft or state.gcs_ft is not None
        self._procs: dict[str, subprocess.Popen] = {}
        self.network = Network(state.run_id, state.subnet) if state.subnet else None

    # --- where things are ------------------------------------------------------------------

    @property
    def run_id(self) -> str:
        return self.state.run_id

    @property
    def run_dir(self) -> Path:
        return Path(self.state.run_dir)

    @property
    def state_file(self) -> Path:
        return self.run_dir / "state.json"

    @property
    def token_path(self) -> Path:
        return self.run_dir / "auth_token"

    @property
    def head(self) -> Host:
        return self.state.hosts["head"]

    @property
    def workers(self) -> list[Host]:
        return [h for h in self.state.hosts.values() if h.role == "worker"]

    @property
    def redis(self) -> Host | None:
        return self.state.hosts.get("redis")

    @property
    def gcs_address(self) -> str:
        return f"{self.head.address}:{nodes.GCS_PORT}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{self.head.address}:{nodes.DASHBOARD_PORT}"

    def serve_url(self, host: Host) -> str:
        """The Serve HTTP port of `host` (HAProxy on every node: proxy_location EveryNode)."""
        return f"http://{host.address}:{nodes.SERVE_PORT}"

    @property
    def ft(self) -> nodes.GcsFaultTolerance | None:
        return nodes.GcsFaultTolerance(**self.state.gcs_ft) if self.state.gcs_ft else None

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token_path.read_text().strip()}"}

    def client_env(self) -> dict[str, str]:
        """The environment of a driver or CLI run on a host (zeroshot score, serve deploy)."""
        env = nodes.node_env(self.run_dir, self.token_path, None, head=False)
        env["RAY_ADDRESS"] = self.gcs_address
        return env

    # --- up and down -----------------------------------------------------------------------

    def save(self) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(self.state.to_json())
        os.replace(tmp, self.state_file)

    def up(self, timeout_s: float = 180) -> HostCluster:
        """Make the hosts and start Ray on them; on any failure, remove what was made."""
        try:
            self._up(timeout_s)
        except BaseException:
            self.down()
            raise
        return self

    def _up(self, timeout_s: float) -> None:
        self.run_dir.mkdir(mode=0o700, parents=True)
        (self.run_dir / "logs").mkdir()
        with open(os.open(self.token_path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write(secrets.token_hex(32))
        self.save()
        with subnet_lock():
            self.state.subnet = _pick_subnet()
            self.network = Network(self.run_id, self.state.subnet)
            self.state.bridge = self.network.bridge
            self.save()
            self.network.create_bridge()
        hosts = [("head", "head", HEAD_INDEX, "h")]
        hosts += [(f"w{i + 1}", "worker", FIRST_WORKER_INDEX + i, f"w{i + 1}")
                  for i in range(self.n_workers)]  # fmt: skip
        if self.want_gcs_ft:
            hosts.append(("redis", "redis", REDIS_INDEX, "r"))
        for name, role, index, short in hosts:
            link = self.network.link_of(short, index)
            host = Host(name, role, f"zs{self.run_id}-{name}", link.veth, link.address)
            self.state.hosts[name] = host
            self.save()
            self.network.add_host(host.link)
        deadline = time.monotonic() + timeout_s
        if self.want_gcs_ft:
            password = secrets.token_hex(16)
            self.state.gcs_ft = dataclasses.asdict(
                nodes.GcsFaultTolerance(
                    redis_address=f"{self.redis.address}:{nodes.REDIS_PORT}",
                    password=password,
                    namespace=f"zeroshot-{self.run_id}",
                )
            )
            self.save()
            self._start(self.redis, nodes.redis_command(self.redis.address, password,
                                                         self.run_dir))  # fmt: skip
            self.wait_port(self.redis.address, nodes.REDIS_PORT, deadline)
        self.start_node(self.head)
        self.wait_port(self.head.address, nodes.GCS_PORT, deadline, self.head)
        for worker in self.workers:  # they join in parallel
            self.start_node(worker)
        self.wait_nodes(1 + self.n_workers, max(1.0, deadline - time.monotonic()))

    def down(self, grace_s: float = 3.0, keep_logs: bool = False) -> list[str]:
        """Remove everything this run made: the processes in its hosts (SIGTERM, then SIGKILL
        after `grace_s`), the namespaces, links and bridge, the run directory (not when
        `keep_logs`). Returns what could not be removed (empty when all is gone)."""
        left: list[str] = []
        hosts = list(self.state.hosts.values())
        # Every host at once: SIGTERM, a grace period in common, then SIGKILL host by host.
        procs.signal_all([p for h in hosts for p in procs.pids_in(h.netns)], signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while any(procs.pids_in(h.netns) for h in hosts) and time.monotonic() < deadline:
            time.sleep(0.1)
        for host in hosts:
            stuck = procs.kill_netns(host.netns)
            if stuck:
                left += [f"{host.name}: {p}" for p in procs.describe(stuck)]
                continue
            try:
                Network.remove_host(host.link)
            except RuntimeError as exc:
                left.append(f"{host.name}: {exc}")
        for proc in self._procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)  # reap what we started (a zombie holds no namespace)
        if self.network is not None:
            try:
                self.network.remove_bridge()
            except RuntimeError as exc:
                left.append(f"bridge: {exc}")
        if not left and not keep_logs:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        return left

    def leftovers(self) -> list[str]:
        """What of this run this machine still has, by the names and ids it recorded:
        namespaces, links, processes in its hosts, its bridge (empty after `down`)."""
        netns = set(run_ip("netns", "list", check=False).stdout.split())
        links = run_ip("-br", "link", check=False).stdout.splitlines()
        names = {line.split()[0].split("@")[0] for line in links if line.strip()}
        hosts = list(self.state.hosts.values())
        left = [f"netns {h.netns}" for h in hosts if h.netns in netns]
        left += [f"link {h.veth}" for h in hosts if h.veth in names]
        left += [f"pid {p}" for h in hosts for p in procs.pids_in(h.netns)]
        if self.state.bridge and self.state.bridge in names:
            left.append(f"bridge {self.state.bridge}")
        return left

    def __enter__(self) -> HostCluster:
        return self.up()

    def __exit__(self, *exc) -> None:
        left = self.down()
        if left and exc[0] is None:
            raise RuntimeError(f"host cluster {self.run_id} left: {left}")

    @classmethod
    def load(cls, state_file: Path) -> HostCluster:
        """The run recorded in `state_file` (to bring it down from another process)."""
        state = State.from_json(Path(state_file).read_text())
        workers = sum(h.role == "worker" for h in state.hosts.values())
        return cls(workers, state=state)

    # --- nodes -----------------------------------------------------------------------------

    def exec(
        self, host: Host, cmd: list[str], env: dict | None = None, **kwargs
    ) -> subprocess.Popen:
        """Start `cmd` on `host` (in its network namespace, its own session)."""
        return subprocess.Popen(
            [*nsexec(host.netns), *cmd],
            env=self.client_env() if env is None else env,
            start_new_session=True,
            **kwargs,
        )

    def run(self, host: Host, cmd: list[str], timeout: float = 300, **kwargs):
        """Run `cmd` on `host` to its end; its output captured."""
        proc = self.exec(host, cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         **kwargs)  # fmt: skip
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            procs.signal_all([proc.pid], signal.SIGKILL)
            out, err = proc.communicate()
            raise TimeoutError(
                f"{' '.join(cmd)[:200]} on {host.name} ran past {timeout:.0f} s; its stderr:\n"
                f"{err[-3000:]}"
            ) from exc
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def _start(self, host: Host, cmd: list[str], env: dict | None = None) -> None:
        host.boots += 1
        log = self.run_dir / "logs" / f"{host.name}.{host.boots}.log"
        with open(log, "w") as out:
            proc = subprocess.Popen(
                [*nsexec(host.netns), *cmd],
                env=env or {"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._procs[f"{host.name}.{host.boots}"] = proc
        host.pid = proc.pid
        self.save()

    def start_node(self, host: Host) -> None:
        """Start the host's Ray node (a fresh temp dir each boot, as a new pod has)."""
        temp = self.run_dir / f"{host.name}.{host.boots + 1}"
        ft = self.ft
        if host.role == "head":
            cmd = nodes.head_command(host.address, temp, ft)
        else:
            cmd = nodes.worker_command(
                self.head.address, host.address, temp, self.worker_cpus, self.worker_gpus
            )
        self._start(host, cmd, nodes.node_env(self.run_dir, self.token_path, ft,
                                              head=host.role == "head"))  # fmt: skip

    def log(self, host: Host, boot: int | None = None) -> str:
        path = self.run_dir / "logs" / f"{host.name}.{boot or host.boots}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def node_running(self, host: Host) -> bool:
        """Whether the host's `ray start --block` of its current boot still runs."""
        proc = self._procs.get(f"{host.name}.{host.boots}")
        return proc is not None and proc.poll() is None

    # --- faults ----------------------------------------------------------------------------

    def kill(self, host: Host) -> None:
        """SIGKILL every process on the host (its link stays): a crashed head, a machine that
        lost power but whose address answers nothing."""
        left = procs.kill_netns(host.netns)
        if left:
            raise RuntimeError(f"could not kill on {host.name}: {procs.describe(left)}")
        self._reap()

    def lose(self, host: Host) -> None:
        """The host is gone, as a machine that loses power: its link removed first, so no
        FIN or RST of its dying processes reaches anyone (their peers find out by timeouts),
        then every process on it SIGKILLed."""
        Network.unplug(host.link)
        self.kill(host)

    def restore(self, host: Host) -> None:
        """The lost host comes back (a rebooted machine, a new pod): a fresh namespace at the
        same address, and its Ray node started again."""
        Network.remove_host(host.link)
        self.network.add_host(host.link)
        self.start_node(host)

    def partition(self, host: Host) -> None:
        """Cut the host's link: its processes run on, and nothing reaches it or leaves it."""
        Network.set_link(host.link, up=False)

    def heal(self, host: Host) -> None:
        Network.set_link(host.link, up=True)

    def _reap(self) -> None:
        for proc in self._procs.values():
            proc.poll()

    # --- waiting ---------------------------------------------------------------------------

    def wait_port(self, address: str, port: int, deadline: float, host: Host | None = None):
        while True:
            with socket.socket() as s:
                s.settimeout(1.0)
                if s.connect_ex((address, port)) == 0:
                    return
            if host is not None and not self.node_running(host):
                raise RuntimeError(f"{host.name} exited:\n{self.log(host)[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {address}:{port}")
            time.sleep(0.3)

    def alive_nodes(self) -> list[dict[str, Any]]:
        """Nodes the head lists as alive (the dashboard's state API)."""
        return localctl.live_nodes(self.dashboard_url, self.auth_headers())

    def wait_nodes(self, count: int, timeout_s: float = 120) -> list[dict[str, Any]]:
        """Wait until exactly `count` nodes are alive, each at an address of ours."""
        deadline = time.monotonic() + timeout_s
        seen: list = []
        last = ""
        while time.monotonic() < deadline:
            try:
                seen = self.alive_nodes()
                if len(seen) == count:
                    return seen
            except (OSError, urllib.error.URLError, ValueError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            head = self.head
            if head.pid and not self.node_running(head) and not procs.pids_in(head.netns):
                raise RuntimeError(f"the head exited:\n{self.log(head)[-3000:]}")
            time.sleep(1.0)
        ips = sorted(n.get("node_ip") for n in seen)
        raise TimeoutError(f"{len(seen)} of {count} nodes alive after {timeout_s:.0f}s: {ips} "
                           f"{last}")  # fmt: skip

    def describe(self) -> str:
        lines = [f"host cluster {self.run_id} (state: {self.state_file})"]
        for h in self.state.hosts.values():
            lines.append(f"  {h.name:6} {h.address:15} netns {h.netns}")
        lines.append(f"  RAY_ADDRESS={self.gcs_address}  dashboard {self.dashboard_url}")
        lines.append(f"  Serve: {', '.join(self.serve_url(h) for h in (self.head, *self.workers))}")
        lines.append(f"  auth: RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={self.token_path}")
        return "\n".join(lines)
