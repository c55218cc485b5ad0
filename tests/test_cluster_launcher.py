"""The Ray cluster launcher config (cluster/launcher/aws.yaml): it parses, passes Ray's own
schema after Ray fills in its defaults, names only node types that exist, and its worker
counts and resources are consistent with the Serve config."""

from __future__ import annotations

import copy
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
LAUNCHER = REPO / "cluster" / "launcher" / "aws.yaml"
SERVE_CONFIG = REPO / "serve" / "config.yaml"


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(LAUNCHER.read_text())


def test_passes_ray_schema_after_defaults(config):
    """What `ray up` does first: merge the provider defaults, then validate."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    assert prepared["provider"]["type"] == "aws"


def test_names_only_node_types_that_exist(config):
    types = config["available_node_types"]
    assert config["head_node_type"] in types

    # every field that names a node type (head_node_type, worker_default_node_type, ...)
    # names a declared one
    def named(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key.endswith("node_type") and isinstance(value, str):
                    yield key, value
                yield from named(value)
        elif isinstance(node, list):
            for item in node:
                yield from named(item)

    refs = list(named(config))
    assert refs
    for key, value in refs:
        assert value in types, f"{key}: {value} is not in available_node_types"


def test_head_schedules_nothing_and_gpu_workers_exist(config):
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("CPU") == 0
    assert not head["resources"].get("GPU")
    gpu_types = [n for n, t in types.items() if t.get("resources", {}).get("GPU", 0) > 0]
    assert gpu_types, "no GPU worker node type"
    for name in gpu_types:
        assert name != config["head_node_type"]
        assert types[name]["node_config"]["InstanceType"].startswith(("g", "p"))


def test_worker_counts_consistent(config):
    types = config["available_node_types"]
    head = config["head_node_type"]
    total_min = 0
    for name, t in types.items():
        if name == head:
            assert t.get("max_workers", 0) == 0 and t.get("min_workers", 0) == 0
            continue
        lo, hi = t.get("min_workers", 0), t["max_workers"]
        assert 0 <= lo <= hi <= config["max_workers"], name
        total_min += lo
    assert total_min <= config["max_workers"]
    assert sum(t["max_workers"] for n, t in types.items() if n != head) <= config["max_workers"]


@pytest.mark.skipif(not SERVE_CONFIG.exists(), reason="serve/config.yaml does not exist yet")
def test_gpu_workers_hold_the_serve_config(config):
    from serve.config import CLASSIFIER_NAME, AppConfig

    serve = yaml.safe_load(SERVE_CONFIG.read_text())
    (app,) = serve["applications"]
    options = AppConfig.model_validate(app["args"]).deployment_options(cluster_gpus=1)
    clf = options[CLASSIFIER_NAME]
    opts = clf.get("ray_actor_options") or {}
    gpus_per_replica = float(opts.get("num_gpus", 0))
    cpus_per_replica = float(opts.get("num_cpus", 1))
    max_replicas = clf.get("autoscaling_config", {}).get("max_replicas", clf.get("num_replicas", 1))
    types = config["available_node_types"]
    gpu = [t for t in types.values() if t.get("resources", {}).get("GPU", 0) > 0]
    assert any(
        t["resources"]["GPU"] >= gpus_per_replica and t["resources"]["CPU"] >= cpus_per_replica
        for t in gpu
    )
    capacity = sum(t["resources"]["GPU"] * t["max_workers"] for t in gpu)
    assert capacity >= max_replicas * gpus_per_replica


def test_setup_installs_the_project_with_the_image_pins(config):
    assert config["file_mounts"] == {"/home/ubuntu/zeroshot": "."}
    setup = "\n".join(config["setup_commands"])
    assert re.search(r"pip install .*-e ~/zeroshot", setup)
    dockerfile = (REPO / "cluster" / "Dockerfile").read_text()
    for pkg in ("torch", "transformers"):
        pinned = re.search(rf"{pkg}==([0-9.]+)", setup).group(1)
        arg = re.search(rf"ARG {pkg.upper()}_VERSION=([0-9.]+)", dockerfile).group(1)
        assert pinned == arg, f"{pkg}: launcher {pinned} vs image {arg}"
    assert ".git" in config["rsync_exclude"]


def test_ray_start_runs_with_the_fast_ingress_settings(config, tmp_path):
    """`ray start` runs in a login shell that sources ~/.bashrc: the setup line writes
    `serve.fast_ingress.ENV` there once, replacing what an earlier `ray up` wrote."""
    from serve import fast_ingress

    line = next(c for c in config["setup_commands"] if "zeroshot-serve-env" in c)
    bashrc = tmp_path / ".bashrc"
    bashrc.write_text("export KEEP=1\nexport RAY_SERVE_HAPROXY_RETRIES=0 # zeroshot-serve-env\n")
    shell = {"HOME": str(tmp_path), "PATH": os.environ["PATH"]}
    for _ in range(2):  # `ray up` twice
        subprocess.run(["bash", "-c", line], env=shell, check=True)
    out = subprocess.run(
        ["bash", "-c", "source ~/.bashrc && env"], env=shell, capture_output=True, text=True
    ).stdout
    env = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    assert {name: env.get(name) for name in fast_ingress.ENV} == fast_ingress.ENV
    assert env["KEEP"] == "1"
    assert bashrc.read_text().count("zeroshot-serve-env") == 1


def test_start_commands_and_usage(config):
    head = " ".join(config["head_start_ray_commands"])
    assert "--head" in head and "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    worker = " ".join(config["worker_start_ray_commands"])
    assert "--address=$RAY_HEAD_IP:6379" in worker
    text = LAUNCHER.read_text()
    # the file documents how to start the service and a batch job on the cluster
    assert "serve deploy ~/zeroshot/serve/config.yaml" in text
    assert "ray job submit" in text and "zeroshot score" in text
