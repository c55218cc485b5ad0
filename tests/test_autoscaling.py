"""Autoscaling, proved: on a local multi-node `ray.cluster_utils.Cluster` (a head without GPU and
two worker nodes declaring one GPU each), load makes Serve's autoscaler add a classifier replica
on the second GPU node and its absence removes it again, and no request fails during either
change.

The app runs the `null` backend (no forward pass, no CUDA) slowed to a device scoring 20 pairs/s,
so a handful of concurrent HTTP clients keep the classifier's ongoing requests above its target
(2: `max(batching.max_batch_size, 2)` with batches of 1 pair). The ingress may keep 8 classifier
calls in flight, so those clients reach the classifier at once. Delays, the metrics push interval
and the look-back window are short so each change takes seconds, not minutes. While the second
replica is removed a single client keeps sending (below target), so requests cross that change
too.
"""

from __future__ import annotations

import random
import socket
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import pytest

from serve.config import APP_NAME, CLASSIFIER_NAME, AppConfig

# The long suite (`python3 -m pytest -m slow`).
pytestmark = [pytest.mark.ray, pytest.mark.slow]

LABEL_POOL = ["sports", "politics", "business", "science", "health", "travel", "music", "food"]
TEXT = "The team won the championship after a late goal."
LOAD_CLIENTS = 6  # concurrent HTTP clients while scaling up (bounded)
SCALE_TIMEOUT_S = 90.0  # longest wait for a replica to be added or removed
HOLD_S = 3.0  # keep the load on this long at two replicas
REQUEST_TIMEOUT_S = 30.0
REPLICA_CLASS = f"ServeReplica:{APP_NAME}:{CLASSIFIER_NAME}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def gpu_cluster():
    """Head (CPUs only) + two workers with one declared GPU each; Serve's proxy on the head."""
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "num_gpus": 0, "include_dashboard": False},
    )
    gpu_nodes = [cluster.add_node(num_cpus=2, num_gpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    port = _free_port()
    try:
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        yield {
            "url": f"http://127.0.0.1:{port}",
            "gpu_nodes": {node.node_id for node in gpu_nodes},
        }
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()


def _app_config(model: str) -> AppConfig:
    return AppConfig(
        model=model,
        dtype="float32",
        device="cpu",  # never used by the null backend; no CUDA behind the declared GPUs
        backend="null",
        null_pairs_per_s=20.0,  # a 2-label request takes ~0.1 s on the classifier
        # Small batches: an ingress replica opens a second call with 2 pairs (one request)
        # waiting, so 6 clients keep several calls on the classifier, one client one.
        batching={"max_batch_size": 4},
        ingress={
            "min_replicas": 1,
            "max_replicas": 1,
            "num_cpus": 0.25,
        },
        classifier={
            "min_replicas": 1,
            "max_replicas": 2,
            "num_cpus": 0.5,
            # The null backend asks for no GPU by default; the test is about GPU placement.
            "num_gpus": 1,
            "upscale_delay_s": 1.0,
            "downscale_delay_s": 4.0,
            "graceful_shutdown_timeout_s": 20.0,
        },
    )


def _deploy(cfg: AppConfig) -> None:
    from ray import serve

    from serve.app import build

    autoscaling = cfg.deployment_options()[CLASSIFIER_NAME]["autoscaling_config"]
    # Two ingress calls on a replica (busy, with work queued behind) is the target.
    assert autoscaling["target_ongoing_requests"] == 2
    # Serve's defaults push handle metrics every 10 s and average them over 30 s: too slow for
    # a test. Neither is an AppConfig field (metrics_interval_s is deprecated in favour of
    # environment variables that Ray 2.60's router does not read yet), hence the override.
    fast = {**autoscaling, "metrics_interval_s": 0.5, "look_back_period_s": 2.0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        app = build(cfg, overrides={CLASSIFIER_NAME: {"autoscaling_config": fast}})
        serve.run(app, name=APP_NAME, route_prefix="/")


def _replica_states() -> dict[str, int]:
    """The classifier's replicas by state, as the Serve controller reports them."""
    from ray import serve

    app = serve.status().applications.get(APP_NAME)
    deployment = app.deployments.get(CLASSIFIER_NAME) if app else None
    if deployment is None:
        return {}
    return {str(getattr(k, "value", k)): n for k, n in deployment.replica_states.items() if n}


def _replica_nodes() -> list[str]:
    """Nodes of the live classifier replica actors, from the GCS actor table."""
    import ray

    actors = ray._private.state.actors().values()
    return [
        a["Address"]["NodeID"]
        for a in actors
        if a["ActorClassName"] == REPLICA_CLASS and a["State"] == "ALIVE"
    ]


def _wait_for(
    what: str,
    done: Callable[[dict[str, int]], bool],
    history: list[tuple[float, dict[str, int]]],
    timeout_s: float = SCALE_TIMEOUT_S,
) -> None:
    """Poll the classifier's replica states until `done(states)`; fail after `timeout_s` with
    every change of state seen so far. `history` collects (monotonic time, states)."""
    start = time.monotonic()
    while True:
        states = _replica_states()
        if not history or history[-1][1] != states:
            history.append((time.monotonic(), states))
        if done(states):
            return
        if time.monotonic() - start > timeout_s:
            pytest.fail(
                f"timed out after {timeout_s:.0f} s waiting for {what}; classifier replica "
                f"states seen (s since the first, states): {_timeline(history)}"
            )
        time.sleep(0.25)


def _timeline(history: list[tuple[float, dict[str, int]]]) -> list:
    return [(round(t - history[0][0], 1), states) for t, states in history]


@dataclass
class Result:
    phase: str
    status: int | None  # None: no answer (connection error, timeout)
    problem: str | None  # why it does not count as a valid answer


def _check(labels: list[str], response: httpx.Response) -> str | None:
    if response.status_code != 200:
        return f"status {response.status_code}: {response.text[:200]}"
    try:
        body = response.json()
        got = [item["label"] for item in body]
        scores = [float(item["score"]) for item in body]
    except Exception as exc:  # noqa: BLE001 - any malformed body is a failed request
        return f"malformed body {response.text[:200]!r}: {exc!r}"
    if sorted(got) != sorted(labels):
        return f"labels {got} for {labels}"
    if abs(sum(scores) - 1.0) > 1e-3:
        return f"scores {scores} do not sum to 1"
    return None


class Load:
    """Bounded concurrent HTTP clients on 127.0.0.1. Each client sends one request after the
    other until stopped (or its deadline passes); every result is kept with the phase it was
    sent in. `clients` can be lowered while it runs: the surplus clients stop."""

    def __init__(self, url: str, clients: int, deadline_s: float):
        self.url = url
        self.phase = "up"
        self.active = clients
        self.results: list[Result] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.deadline = time.monotonic() + deadline_s
        self.threads = [
            threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(clients)
        ]

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(REQUEST_TIMEOUT_S + 5)
        assert not any(t.is_alive() for t in self.threads), "a load client did not stop"

    def _client(self, i: int) -> None:
        rng = random.Random(i)
        with httpx.Client(base_url=self.url, timeout=REQUEST_TIMEOUT_S) as client:
            while not self.stop.is_set() and i < self.active and time.monotonic() < self.deadline:
                labels = rng.sample(LABEL_POOL, 2)
                phase = self.phase
                body = {"inputs": TEXT, "parameters": {"candidate_labels": labels}}
                try:
                    response = client.post("/", json=body)
                except httpx.HTTPError as exc:
                    result = Result(phase, None, repr(exc))
                else:
                    result = Result(phase, response.status_code, _check(labels, response))
                with self.lock:
                    self.results.append(result)


def test_load_adds_a_gpu_replica_and_its_absence_removes_it(gpu_cluster, tiny_model):
    import ray

    _deploy(_app_config(tiny_model))
    url, gpu_nodes = gpu_cluster["url"], gpu_cluster["gpu_nodes"]
    with httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT_S) as client:
        assert client.get("/healthz").status_code == 200
        labels = ["sports", "music"]
        probe = client.post("/", json={"inputs": TEXT, "parameters": {"candidate_labels": labels}})
        assert _check(labels, probe) is None, probe.text
    history: list = []
    _wait_for("one RUNNING classifier replica at rest", lambda s: s == {"RUNNING": 1}, history)
    (first_node,) = _replica_nodes()
    assert first_node in gpu_nodes, "the classifier replica is not on a GPU node"

    # Generous bound on the load as a whole: both waits, the hold, and a margin.
    with Load(url, LOAD_CLIENTS, deadline_s=2 * SCALE_TIMEOUT_S + HOLD_S + 30) as load:
        _wait_for(
            "load to add a second RUNNING classifier replica",
            lambda s: s.get("RUNNING", 0) == 2,
            history,
        )
        nodes = _replica_nodes()
        free_gpus = sum(
            resources.get("GPU", 0.0)
            for resources in ray._private.state.available_resources_per_node().values()
        )
        time.sleep(HOLD_S)  # the load goes on at two replicas
        assert _replica_states() == {"RUNNING": 2}, "the classifier did not stay at 2 replicas"

        # Its absence: one client, one request at a time (below the target of 2 per replica).
        load.phase = "down"
        load.active = 1
        _wait_for(
            "the second classifier replica to be removed without load",
            lambda s: s == {"RUNNING": 1},
            history,
        )
        time.sleep(1.0)  # a few more requests on the remaining replica
        load.phase = "after"

    by_phase = {p: [r for r in load.results if r.phase == p] for p in ("up", "down")}
    failed = [r for r in load.results if r.problem is not None]
    counts = {p: len(rs) for p, rs in by_phase.items()}
    print(f"replica states: {_timeline(history)}; requests by phase: {counts}")
    assert not failed, f"{len(failed)} of {len(load.results)} requests failed: {failed[:5]}"
    assert by_phase["up"] and by_phase["down"], f"no request during a change: {counts}"
    # Two replicas, one on each GPU node, holding each node's only GPU.
    assert sorted(nodes) == sorted(gpu_nodes), f"replicas on {nodes}, GPU nodes {gpu_nodes}"
    assert free_gpus == 0.0, f"{free_gpus} GPU(s) left free with two replicas"
