"""cluster/local/: the multi-node scripts on one machine.

The end-to-end tests drive the scripts as a user would: start a head and two worker raylets
(fake GPUs), `serve deploy` serve/config.yaml with the fixture model, classify over HTTP, run a
small `zeroshot score` job with --address, stop, and check that nothing is left running. The
cluster uses ports and a temp dir of its own (never Ray's defaults), and is stopped by the
fixture's finalizer even when a test fails.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
LOCAL = REPO / "cluster" / "local"
SCRIPTS = ["env.sh", "start.sh", "deploy.sh", "score.sh", "stop.sh"]
SERVE_CONFIG = REPO / "serve" / "config.yaml"

sys.path.insert(0, str(LOCAL))
import localctl  # noqa: E402

sys.path.insert(0, str(REPO / "tests"))
from reference import assert_same_result  # noqa: E402

EXAMPLE_SERVE_CONFIG = {
    "proxy_location": "EveryNode",
    "http_options": {"host": "0.0.0.0", "port": 8000},
    "applications": [
        {
            "name": "zeroshot",
            "route_prefix": "/",
            "import_path": "serve.app:build_app",
            "args": {
                "model": "valhalla/distilbart-mnli-12-1",
                "revision": "abc",
                "device": "auto",
                "classifier": {"num_gpus": 1, "min_replicas": 2, "max_replicas": 8},
                "ingress": {"max_replicas": 4},
            },
        }
    ],
}


# --- the scripts, statically -----------------------------------------------------------------


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_is_valid_strict_bash(name):
    path = LOCAL / name
    proc = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    if name != "env.sh":  # sourced, inherits the caller's options
        assert "set -euo pipefail" in path.read_text()
        assert os.access(path, os.X_OK), f"{name} is not executable"


@pytest.mark.parametrize("name", ["start.sh", "deploy.sh", "score.sh", "stop.sh"])
def test_script_help(name):
    proc = subprocess.run(
        ["bash", str(LOCAL / name), "--help"], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    assert f"cluster/local/{name}" in proc.stdout


def test_no_unscoped_ray_stop():
    """`ray stop` would end every Ray on the machine, other people's clusters included."""
    for name in SCRIPTS:
        for line in (LOCAL / name).read_text().splitlines():
            code = line.split("#", 1)[0]
            assert "ray stop" not in code, f"{name}: {line}"


def test_ports_avoid_ray_defaults():
    out = subprocess.run(
        ["bash", "-c", f"source {LOCAL / 'env.sh'}; echo $ZS_GCS_PORT $ZS_DASHBOARD_PORT "
         "$ZS_CLIENT_PORT $ZS_SERVE_PORT; zs_node_ports 0; zs_node_ports 1"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    ports = [int(p) for p in out]
    assert len(set(ports)) == len(ports)
    assert not set(ports) & {6379, 8265, 10001, 8000, 52365, 8076}


def test_local_serve_config_adapts_the_deploy_config():
    out = localctl.local_serve_config(
        EXAMPLE_SERVE_CONFIG, port=7393, model="/models/tiny", device="cpu", dtype="float32",
        num_gpus=1, max_replicas=2,
    )  # fmt: skip
    assert out["proxy_location"] == "HeadOnly"
    assert out["http_options"] == {"host": "127.0.0.1", "port": 7393}
    (app,) = out["applications"]
    assert app["args"]["model"] == "/models/tiny"
    assert "revision" not in app["args"]  # a local path has no hub revision
    assert (app["args"]["device"], app["args"]["dtype"]) == ("cpu", "float32")
    assert "deployments" not in app  # every option goes through AppConfig (the args)
    assert app["args"]["classifier"] == {"num_gpus": 1.0, "min_replicas": 2, "max_replicas": 2}
    assert app["args"]["ingress"] == {"max_replicas": 2}
    batched = localctl.local_serve_config(EXAMPLE_SERVE_CONFIG, port=1, max_batch_tokens=512)
    forward = batched["applications"][0]["args"]["batching"]["forward"]
    assert forward == {"max_batch_tokens": 512}
    # the input is not modified
    assert EXAMPLE_SERVE_CONFIG["http_options"]["port"] == 8000


@pytest.mark.skipif(not SERVE_CONFIG.exists(), reason="serve/config.yaml does not exist yet")
def test_local_config_from_real_serve_config_is_valid():
    from ray.serve.schema import ServeDeploySchema

    from serve.config import AppConfig

    out = localctl.local_serve_config(
        yaml.safe_load(SERVE_CONFIG.read_text()), port=7393, model="/m", num_gpus=0.5,
        max_replicas=1,
    )  # fmt: skip
    ServeDeploySchema.model_validate(out)
    AppConfig.model_validate(out["applications"][0]["args"])


# --- end to end ------------------------------------------------------------------------------


def _free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def pick_port_base(n_workers: int) -> int:
    """A base B whose whole block (B .. B+799: control ports, then worker ports) is free, below
    the ephemeral range, away from other test clusters."""
    bases = list(range(17000, 32000, 1000))
    random.shuffle(bases)
    for base in bases:
        if all(_free(p) for p in range(base, base + 200 + 200 * (n_workers + 1))):
            return base
    pytest.skip("no free block of 800 ports found for the local cluster")


def ray_processes(tmp: str, sids: set[int]) -> list[str]:
    """Processes of our cluster still alive: in a recorded session, or naming our temp dir."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        state, sid = fields[0], int(fields[3])
        if state == "Z":
            continue
        if sid in sids or (tmp in cmd and "ray" in cmd):
            found.append(f"{entry.name} {cmd[:160]}")
    return found


class LocalCluster:
    def __init__(self, n_workers: int = 2):
        self.n_workers = n_workers
        self.tmp = tempfile.mkdtemp(prefix="zsr", dir="/tmp")  # short: unix socket paths
        base = pick_port_base(n_workers)
        self.env = dict(os.environ)
        self.env.update(
            ZS_PORT_BASE=str(base),
            ZS_WORKER_PORT_BASE=str(base + 200),
            ZS_RAY_TMP=f"{self.tmp}/c",
            ZS_PYTHON=sys.executable,
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            HF_HUB_OFFLINE="1",
        )
        self.serve_url = f"http://127.0.0.1:{base + 3}"
        self.dashboard = f"http://127.0.0.1:{base + 1}"
        self.sids: set[int] = set()
        self.stopped = False

    def run(self, script: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            ["bash", str(LOCAL / script), *args],
            env=self.env, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        if proc.returncode != 0:
            raise AssertionError(
                f"{script} {' '.join(args)} exited {proc.returncode}\n"
                f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-6000:]}"
            )
        return proc

    def record_sessions(self) -> None:
        for f in Path(self.env["ZS_RAY_TMP"], "state").glob("*.sid"):
            text = f.read_text().strip()
            if text.isdigit():
                self.sids.add(int(text))

    def stop(self) -> subprocess.CompletedProcess:
        self.record_sessions()
        proc = self.run("stop.sh", "--clean", timeout=60)
        self.stopped = True
        return proc

    def leftovers(self) -> list[str]:
        return ray_processes(self.env["ZS_RAY_TMP"], self.sids)

    def dashboard_json(self, path: str):
        token = Path(self.env["ZS_RAY_TMP"], "auth_token").read_text().strip()
        req = urllib.request.Request(
            self.dashboard + path, headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())


@pytest.fixture(scope="module")
def local_cluster():
    cluster = LocalCluster(n_workers=2)
    try:
        cluster.run("start.sh", str(cluster.n_workers), "--num-gpus", "1", "--num-cpus", "4")
        cluster.record_sessions()
        yield cluster
    finally:
        try:
            if not cluster.stopped or cluster.leftovers():
                cluster.stop()
        finally:
            left = cluster.leftovers()
            shutil.rmtree(cluster.tmp, ignore_errors=True)
            assert not left, f"local cluster processes left running: {left}"


def post_json(url: str, body: dict, timeout: float = 60) -> dict:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


@pytest.mark.ray
@pytest.mark.slow
def test_local_cluster_serves_classification(local_cluster, tiny_model, reference_pipeline):
    if not SERVE_CONFIG.exists():
        pytest.skip("serve/config.yaml does not exist yet")
    local_cluster.run("deploy.sh", "--model", tiny_model, "--dtype", "float32", "--timeout", "240",
                      timeout=300)  # fmt: skip
    texts = ["The invoice charged me twice.", "What a goal in the last minute!"]
    labels = ["billing", "sports", "account access"]
    answer = post_json(
        f"{local_cluster.serve_url}/v1/classify",
        {"sequences": texts, "candidate_labels": labels},
    )
    assert len(answer["results"]) == len(texts)
    for text, result in zip(texts, answer["results"]):
        assert_same_result(result, reference_pipeline(text, labels))

    # the replicas run on the worker raylets, none on the head
    nodes = local_cluster.dashboard_json("/api/v0/nodes?limit=100")["data"]["result"]["result"]
    head = {n["node_id"] for n in nodes if n.get("is_head_node")}
    assert len([n for n in nodes if n["state"] == "ALIVE"]) == 3
    apps = local_cluster.dashboard_json("/api/serve/applications/")["applications"]
    for name, dep in apps["zeroshot"]["deployments"].items():
        replica_nodes = {r["node_id"] for r in dep["replicas"]}
        assert replica_nodes and not replica_nodes & head, name


@pytest.mark.ray
@pytest.mark.slow
def test_local_cluster_runs_offline_job(local_cluster, tiny_model, reference_pipeline, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = ["Please refund the double charge.", "", "I cannot log in to my account."]
    labels = ["billing", "account access", "sports"]
    src = tmp_path / "in"
    src.mkdir()
    pq.write_table(pa.table({"id": [10, 11, 12], "text": texts}), src / "part-0.parquet")
    out = tmp_path / "out"
    started = time.monotonic()
    local_cluster.run(
        "score.sh", str(src), str(out), "--labels", ",".join(labels), "--model", tiny_model,
        "--dtype", "float32", "--id-column", "id", "--num-actors", "1", "--gpus-per-actor", "1",
        "--no-progress", timeout=180,
    )  # fmt: skip
    print(f"offline job: {time.monotonic() - started:.1f}s")
    rows = {r["id"]: r for r in pq.read_table(out).to_pylist()}
    assert sorted(rows) == [10, 11, 12]  # rows in = rows out
    assert rows[11]["scores"] is None and rows[11]["error"]
    for row_id, text in ((10, texts[0]), (12, texts[2])):
        row = rows[row_id]
        assert row["error"] is None
        assert_same_result(
            {"sequence": row["text"], "labels": row["labels"], "scores": row["scores"]},
            reference_pipeline(text, labels),
        )
        assert row["top_label"] == row["labels"][0]


@pytest.mark.ray
@pytest.mark.slow
def test_local_cluster_stops_and_leaves_nothing(local_cluster):
    assert local_cluster.sids, "start.sh recorded no sessions"
    assert local_cluster.leftovers(), "the cluster should be running before stop.sh"
    local_cluster.stop()
    assert local_cluster.leftovers() == []
    assert not Path(local_cluster.env["ZS_RAY_TMP"]).exists()  # --clean
