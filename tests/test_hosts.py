"""Real hosts on one machine (cluster/hosts): network namespaces on one bridge, an address each.

The quick suite: the network itself (a server on one host reached from another and from this
machine; a partition cuts it and healing restores it; a lost host's link and processes are
gone, and nothing outside it is touched), a Ray cluster of a head with no CPUs and a one-GPU
worker host, each node at its own address, a GPU task placed on the worker host, the cluster
brought down from another process by what it recorded, and a failed start that removes what
it made. Every namespace, link and process is removed by its recorded name or id, also when a
test fails (the fixtures' finalizers).

The Serve app and the offline job across hosts, and the faults (a worker host lost or
partitioned, the head restarted with and without GCS fault tolerance), are the long suite:
tests/test_hosts_faults.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cluster.hosts import network, procs  # noqa: E402
from cluster.hosts.cluster import HostCluster  # noqa: E402
from cluster.hosts.network import Network, nsexec  # noqa: E402

PROBLEM = network.problem()
# CI runs as root with iproute2: there these tests run (and fail, saying why) rather than skip.
needs_hosts = pytest.mark.skipif(
    PROBLEM is not None and not os.environ.get("CI"),
    reason=f"no network namespaces here ({PROBLEM}); to run: as root with iproute2 and "
    "util-linux (nsenter), e.g. `sudo -E python3 -m pytest tests/test_hosts.py` (CI runs as root)",
)


def ip_state() -> tuple[str, str]:
    return (
        subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout,
        subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout,
    )


def get(url: str, timeout: float = 3.0) -> int | str:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (our hosts)
            return resp.status
    except OSError as exc:
        return type(exc).__name__


GET_FROM_HOST = "import sys, urllib.request as u; print(u.urlopen(sys.argv[1], timeout=3).status)"


@pytest.fixture
def two_hosts():
    """A bridge and two hosts on it, no Ray: (network, [link a, link b]); removed after."""
    run_id = f"{os.getpid()}t"
    with network.subnet_lock():
        net = Network(run_id, network.pick_subnet())
        net.create_bridge()
    links = [net.link_of("a", 10), net.link_of("b", 11)]
    try:
        for link in links:
            net.add_host(link)
        yield net, links
    finally:
        for link in links:
            procs.kill_netns(link.netns)
            Network.remove_host(link)
        net.remove_bridge()
        netns, ifaces = ip_state()
        assert not [x for x in [*(lk.netns for lk in links), net.bridge] if x in netns + ifaces]


@needs_hosts
def test_hosts_reach_each_other_until_cut_and_a_lost_host_takes_only_its_own(two_hosts, tmp_path):
    net, (a, b) = two_hosts
    assert [a.address, b.address] != [net.gateway] * 2 and a.address != b.address
    (tmp_path / "index.html").write_text("a")
    server = subprocess.Popen(
        [*nsexec(a.netns), sys.executable, "-m", "http.server", "8080", "--bind", a.address,
         "--directory", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    bystander = subprocess.Popen(["sleep", "300"], start_new_session=True)  # not in any host
    try:
        url = f"http://{a.address}:8080/"
        deadline = time.monotonic() + 30
        while get(url) != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert get(url) == 200  # from this machine, across the bridge

        def from_b() -> str:
            p = subprocess.run([*nsexec(b.netns), sys.executable, "-c", GET_FROM_HOST, url],
                               capture_output=True, text=True, timeout=30)  # fmt: skip
            return p.stdout.strip() or p.stderr.strip().splitlines()[-1]

        assert from_b() == "200"  # host to host
        # The server is in a's namespace and nowhere else; b's loopback does not have it.
        assert server.pid in procs.pids_in(a.netns) and server.pid not in procs.pids_in(b.netns)
        p = subprocess.run([*nsexec(b.netns), sys.executable, "-c", GET_FROM_HOST,
                            "http://127.0.0.1:8080/"], capture_output=True, text=True)  # fmt: skip
        assert p.returncode != 0 and "Connection refused" in p.stderr

        net.set_link(a, up=False)  # a partition: a keeps its address and its server
        assert get(url, timeout=2) != 200
        assert from_b() != "200"  # timed out, or no route once its address is forgotten
        assert server.poll() is None
        net.set_link(a, up=True)
        deadline = time.monotonic() + 30
        while get(url) != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert get(url) == 200 and from_b() == "200"  # healed, the same server

        Network.unplug(a)  # lost: the link is gone, then everything on it killed
        _, links = ip_state()
        assert a.veth not in links and b.veth in links
        assert procs.kill_netns(a.netns) == []
        assert server.wait(10) == -9
        assert bystander.poll() is None  # nothing outside the host was touched
        assert procs.pids_in(a.netns) == []
    finally:
        for p in (server, bystander):
            p.kill()
            p.wait(10)


@pytest.fixture
def cluster_of():
    """Makes HostClusters; each is brought down (by its recorded ids) after the test."""
    made: list[HostCluster] = []

    def make(*args, **kwargs) -> HostCluster:
        made.append(HostCluster(*args, **kwargs))
        return made[-1]

    yield make
    for cluster in made:
        cluster.down()
        assert cluster.leftovers() == []


GPU_TASK = """
import ray
ray.init()
where = ray.remote(num_gpus=1)(lambda: ray.util.get_node_ip_address())
print(ray.get(where.remote(), timeout=120))
"""


@needs_hosts
@pytest.mark.ray
def test_a_cluster_of_hosts_places_a_gpu_task_on_the_worker_host_and_goes_down_by_its_record(
    cluster_of,
):
    cluster = cluster_of(1, worker_cpus=1, worker_gpus=1).up()
    (worker,) = cluster.workers
    assert len({cluster.head.address, worker.address, cluster.network.gateway}) == 3
    nodes = {n["node_ip"]: n for n in cluster.alive_nodes()}
    assert set(nodes) == {cluster.head.address, worker.address}  # each node at its own address
    assert nodes[cluster.head.address]["is_head_node"] is True
    # Every Ray process of a node is in its host: the head's GCS in the head's namespace.
    head_cmds = " ".join(procs.describe(procs.pids_in(cluster.head.netns)))
    assert "gcs_server" in head_cmds and "gcs_server" not in " ".join(
        procs.describe(procs.pids_in(worker.netns))
    )

    # A driver on the head host; the head has no GPU (nor CPU), so the task runs on the worker.
    run = cluster.run(cluster.head, [sys.executable, "-c", GPU_TASK], timeout=180)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split()[-1] == worker.address

    # Down from another process (a shell, after a crash), by the recorded state only.
    assert cluster.state_file.exists()
    down = subprocess.run(
        [sys.executable, "-m", "cluster.hosts", "down", str(cluster.state_file)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert down.returncode == 0, down.stderr[-2000:]
    assert cluster.leftovers() == []
    assert not cluster.run_dir.exists()


@needs_hosts
@pytest.mark.ray
def test_a_failed_start_removes_what_it_made(monkeypatch, cluster_of):
    """A node that cannot start (here: a head whose `ray start` is refused) fails `up` with its
    log, and the hosts made before the failure are gone."""
    from cluster.hosts import nodes

    real = nodes.head_command
    monkeypatch.setattr(nodes, "head_command", lambda *a: [*real(*a), "--no-such-flag"])
    cluster = cluster_of(1)
    with pytest.raises(RuntimeError, match="head exited"):
        cluster.up(timeout_s=60)
    assert cluster.state.hosts  # it had made some
    assert cluster.leftovers() == []
