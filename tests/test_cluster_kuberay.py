"""KubeRay manifests: valid against the KubeRay CRD schemas, never drifting from
serve/config.yaml, and asking for the resources the Serve config and the job need."""

from __future__ import annotations

import copy
import functools
import os
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cluster import render  # noqa: E402

# Reference data kept outside the project (not copied in): ZEROSHOT_KUBERAY_CRDS, else beside it.
CRD_DIR = Path(os.environ.get("ZEROSHOT_KUBERAY_CRDS", REPO.parent / "shared" / "kuberay-crds"))
KUBERAY = REPO / "cluster" / "kuberay"
SERVE_CONFIG = REPO / "serve" / "config.yaml"
MANIFESTS = {
    "rayservice.yaml": ("RayService", "ray.io_rayservices.yaml"),
    "rayjob.yaml": ("RayJob", "ray.io_rayjobs.yaml"),
    "raycluster.yaml": ("RayCluster", "ray.io_rayclusters.yaml"),
}

needs_serve_config = pytest.mark.skipif(
    not SERVE_CONFIG.exists(), reason="serve/config.yaml does not exist yet (Serve issue)"
)
needs_crds = pytest.mark.skipif(
    not CRD_DIR.is_dir(),
    reason=f"KubeRay CRDs not found at {CRD_DIR}: to run these checks, put KubeRay's "
    "ray-operator/config/crd/bases/ray.io_ray{services,jobs,clusters}.yaml (github.com/"
    "ray-project/kuberay, API ray.io/v1) in a directory and set ZEROSHOT_KUBERAY_CRDS to it",
)


def load(name: str) -> dict:
    return yaml.safe_load((KUBERAY / name).read_text())


# --- CRD schema validation -------------------------------------------------------------------


def strict(node):
    """The CRD's structural schema, made strict: an object with declared properties accepts no
    others (the API server would silently prune them, hiding typos such as
    `shutdownAfterJobFinish`). Kubernetes extensions (x-kubernetes-*) are dropped; CEL rules
    (x-kubernetes-validations) cannot be checked here."""
    if isinstance(node, list):
        return [strict(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-"):
            continue
        if key == "properties":
            out[key] = {name: strict(sub) for name, sub in value.items()}
        else:
            out[key] = strict(value)
    if (
        node.get("type") == "object"
        and "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@functools.cache
def crd_validator(crd_file: str, version: str = "v1"):
    import jsonschema

    # The CRDs are large (1 MB each): use libyaml's loader when PyYAML has it.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load((CRD_DIR / crd_file).read_text(), Loader=loader)  # noqa: S506 (safe)
    assert crd["spec"]["group"] == "ray.io"
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            assert v.get("served", True), f"{crd_file}: {version} not served"
            schema = strict(v["schema"]["openAPIV3Schema"])
            jsonschema.Draft7Validator.check_schema(schema)
            return crd["spec"]["names"]["kind"], jsonschema.Draft7Validator(schema)
    raise AssertionError(f"{crd_file} has no version {version}")


def schema_errors(validator, manifest: dict) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in sorted(validator.iter_errors(manifest), key=lambda e: list(e.absolute_path))
    ]


@needs_crds
@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_manifest_valid_against_kuberay_crd(name):
    kind, crd_file = MANIFESTS[name]
    crd_kind, validator = crd_validator(crd_file)
    manifest = load(name)
    assert manifest["apiVersion"] == "ray.io/v1"
    assert manifest["kind"] == kind == crd_kind
    assert manifest["metadata"]["name"]
    assert schema_errors(validator, manifest) == []


@needs_crds
def test_strict_validation_catches_typos_and_types():
    """The validator is not vacuous: a misspelled field and a mistyped value are errors."""
    _, validator = crd_validator("ray.io_rayjobs.yaml")
    manifest = load("rayjob.yaml")
    bad = copy.deepcopy(manifest)
    bad["spec"]["shutdownAfterJobFinish"] = bad["spec"].pop("shutdownAfterJobFinishes")
    assert any("shutdownAfterJobFinish" in e for e in schema_errors(validator, bad))
    bad = copy.deepcopy(manifest)
    bad["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["maxReplicas"] = "4"
    assert schema_errors(validator, bad)
    bad = copy.deepcopy(manifest)
    bad["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0
    assert schema_errors(validator, bad), "rayStartParams values must be strings"


# --- generated from serve/config.yaml, never drifting ----------------------------------------


@needs_serve_config
def test_committed_manifests_match_render():
    rendered = render.render()
    for name, text in rendered.items():
        committed = (KUBERAY / name).read_text()
        assert committed == text, f"cluster/kuberay/{name} is stale: run python -m cluster.render"


@needs_serve_config
def test_render_check_mode_passes():
    assert render.main(["--check"]) == 0


@needs_serve_config
def test_serve_config_v2_is_serve_config_yaml():
    embedded = load("rayservice.yaml")["spec"]["serveConfigV2"]
    assert embedded == SERVE_CONFIG.read_text()
    assert yaml.safe_load(embedded) == yaml.safe_load(SERVE_CONFIG.read_text())


@needs_serve_config
def test_serve_config_v2_valid_for_ray_serve_and_the_app():
    """What KubeRay hands to Serve parses as a Serve deploy config and as the app's args."""
    from ray.serve.schema import ServeDeploySchema

    from serve.config import AppConfig

    config = yaml.safe_load(load("rayservice.yaml")["spec"]["serveConfigV2"])
    schema = ServeDeploySchema.model_validate(config)
    (app,) = schema.applications
    assert app.import_path == "serve.app:build_app"
    cfg = AppConfig.model_validate(config["applications"][0].get("args") or {})
    assert set(cfg.deployment_options(1)) == {render.INGRESS, render.CLASSIFIER}
    # proxies reachable from the Kubernetes Service: all interfaces, port 8000
    http = config.get("http_options") or {}
    assert http.get("host", "0.0.0.0") == "0.0.0.0"
    assert render.serve_http_port(config) == 8000


def test_drift_is_detected(tmp_path):
    """A change to the Serve config changes the rendering (and --check reports it)."""
    serve_text = SERVE_CONFIG.read_text() if SERVE_CONFIG.exists() else EXAMPLE_SERVE_CONFIG
    out = tmp_path / "kuberay"
    src = tmp_path / "config.yaml"
    src.write_text(serve_text)
    assert render.main(["--serve-config", str(src), "--out", str(out)]) == 0
    assert render.main(["--serve-config", str(src), "--out", str(out), "--check"]) == 0
    src.write_text(serve_text + "# one more line\n")
    assert render.main(["--serve-config", str(src), "--out", str(out), "--check"]) == 1


# --- resources match the Serve config and the job --------------------------------------------

# The expected shape of serve/config.yaml, for rendering tests that must not depend on it.
EXAMPLE_SERVE_CONFIG = """\
http_options: {host: 0.0.0.0, port: 8000}
applications:
  - name: zeroshot
    route_prefix: /
    import_path: serve.app:build_app
    args: {model: valhalla/distilbart-mnli-12-1}
    deployments:
      - name: ZeroShotIngress
        autoscaling_config: {min_replicas: 1, max_replicas: 2, target_ongoing_requests: 64}
        ray_actor_options: {num_cpus: 1}
      - name: ZeroShotClassifier
        max_ongoing_requests: 256
        max_queued_requests: 512
        autoscaling_config: {min_replicas: 1, max_replicas: 6, target_ongoing_requests: 64}
        ray_actor_options: {num_cpus: 2, num_gpus: 0.5}
        user_config: {max_batch_size: 128, max_batch_tokens: 32768}
"""


@needs_serve_config
@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_committed_manifest_resources_consistent(name):
    assert render.check_resources(load(name)) == []


@needs_serve_config
def test_rayservice_gpu_group_holds_serve_replicas():
    manifest = load("rayservice.yaml")
    config = yaml.safe_load(SERVE_CONFIG.read_text())
    needs = render.deployment_needs(config)
    clf = needs[render.CLASSIFIER]
    spec = manifest["spec"]["rayClusterConfig"]
    (gpu,) = render.gpu_groups(spec)
    res = gpu["template"]["spec"]["containers"][0]["resources"]
    per_pod = float(res["limits"]["nvidia.com/gpu"])
    assert float(res["requests"]["nvidia.com/gpu"]) == per_pod >= clf.num_gpus > 0
    assert gpu["maxReplicas"] * per_pod >= clf.max_replicas * clf.num_gpus
    assert gpu["minReplicas"] * per_pod >= clf.min_replicas * clf.num_gpus
    assert gpu["minReplicas"] <= gpu["replicas"] <= gpu["maxReplicas"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    tolerations = gpu["template"]["spec"]["tolerations"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations


@needs_serve_config
def test_rayservice_workers_are_ready_only_when_the_app_scores():
    """Serving workers probe the app's `/healthz` through their own HAProxy (after the raylet);
    the head keeps KubeRay's default (KubeRay deploys the app once the head is ready). The
    probe's command runs against a real app in tests/faults/test_serve_faults.py."""
    spec = load("rayservice.yaml")["spec"]["rayClusterConfig"]
    config = yaml.safe_load(SERVE_CONFIG.read_text())
    port = render.serve_http_port(config)
    (gpu,) = render.gpu_groups(spec)
    (container,) = gpu["template"]["spec"]["containers"]
    probe = container["readinessProbe"]
    assert probe == render.serving_readiness_probe(port, render.serve_route_prefix(config))
    check = probe["exec"]["command"][-1]
    assert render.RAYLET_HEALTH_URL in check
    assert check.endswith(f"http://localhost:{port}/healthz")
    assert probe["timeoutSeconds"] >= 2 + 3  # both wget timeouts fit
    assert {"containerPort": port, "name": "serve"} in container["ports"]
    (head,) = spec["headGroupSpec"]["template"]["spec"]["containers"]
    assert "readinessProbe" not in head


def test_rayjob_runs_score_on_object_store_within_gpu_group():
    manifest = load("rayjob.yaml")
    spec = manifest["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] > 0
    assert spec["backoffLimit"] >= 1
    job = render.parse_score_entrypoint(spec["entrypoint"])
    assert job.input.startswith("s3://") and job.output.startswith("s3://")
    # a retry resumes (rows keyed by id) rather than starting over
    assert job.labels and job.id_column and not job.overwrite
    assert job == render.Settings().job  # the entrypoint is the job, written and read back
    (gpu,) = render.gpu_groups(spec["rayClusterSpec"])
    per_pod = render.group_capacity(gpu)[1]
    assert job.gpus_per_actor <= per_pod
    assert job.num_actors * job.gpus_per_actor <= gpu["maxReplicas"] * per_pod
    assert spec["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"


def test_rayjob_entrypoint_parses_with_the_score_cli():
    """The entrypoint's flags are ones `zeroshot score` accepts, and mean the job rendered."""
    import shlex

    from pipelines.cli import config_from_args
    from zeroshot.cli import build_parser

    argv = shlex.split(load("rayjob.yaml")["spec"]["entrypoint"])[1:]
    job = config_from_args(build_parser("score").parse_args(argv))
    assert job.num_actors == 4 and job.gpus_per_actor == 1.0
    assert job.batching.max_batch_tokens == 32768


def test_every_manifest_uses_one_image_and_non_root():
    images = set()
    for name in MANIFESTS:
        spec = render.cluster_spec_of(load(name))
        groups = [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]
        for g in groups:
            pod = g["template"]["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True
            assert pod["securityContext"]["runAsUser"] != 0
            for c in pod["containers"]:
                images.add(c["image"])
                env = {e["name"]: e.get("value") for e in c.get("env", [])}
                assert not any("TOKEN" in k or "SECRET" in k or "PASSWORD" in k for k in env)
    assert len(images) == 1


def test_resource_check_rejects_undersized_groups():
    text = SERVE_CONFIG.read_text() if SERVE_CONFIG.exists() else EXAMPLE_SERVE_CONFIG
    manifest = render.rayservice(render.Settings(), text)
    assert render.check_resources(manifest) == []
    small = copy.deepcopy(manifest)
    small["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplicas"] = 0
    small["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replicas"] = 0
    small["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["minReplicas"] = 0
    assert any("max_replicas" in p for p in render.check_resources(small))
    headful = copy.deepcopy(manifest)
    headful["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"].pop("num-cpus")
    assert any("num-cpus" in p for p in render.check_resources(headful))

    job = render.rayjob(render.Settings())
    greedy = copy.deepcopy(job)
    greedy["spec"]["entrypoint"] = greedy["spec"]["entrypoint"].replace(
        "--num-actors 4", "--num-actors 40"
    )
    assert any("--num-actors" in p for p in render.check_resources(greedy))


def test_render_sizes_gpu_group_from_serve_config():
    """Half a GPU per replica, 6 replicas at most: 3 one-GPU pods; CPUs for the ingress too."""
    manifest = render.rayservice(render.Settings(), EXAMPLE_SERVE_CONFIG)
    (gpu,) = manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert (gpu["minReplicas"], gpu["maxReplicas"]) == (1, 3)
    assert render.check_resources(manifest) == []
    assert manifest["spec"]["serveConfigV2"] == EXAMPLE_SERVE_CONFIG


@needs_serve_config
def test_rayservice_turns_gcs_fault_tolerance_on():
    """The RayService keeps its GCS in Redis (a head restart no longer ends the cluster; what
    it costs is measured in benchmarks/faults_hosts and run in tests/test_hosts_faults.py):
    the address, the password from a Secret (never in the manifest), a namespace of its own,
    and nothing KubeRay refuses beside gcsFaultToleranceOptions (the ft-enabled annotation,
    RAY_REDIS_ADDRESS or a redis-password in rayStartParams)."""
    manifest = load("rayservice.yaml")
    spec = manifest["spec"]["rayClusterConfig"]
    ft = spec["gcsFaultToleranceOptions"]
    assert ft == render.gcs_ft_options(render.Settings())
    assert ft["redisAddress"].startswith("redis://")
    assert ft["redisPassword"] == {
        "valueFrom": {"secretKeyRef": {"name": "zeroshot-redis", "key": "password"}}
    }
    assert ft["externalStorageNamespace"] == "zeroshot"
    assert "ray.io/ft-enabled" not in (manifest["metadata"].get("annotations") or {})
    for group in (spec["headGroupSpec"], *spec["workerGroupSpecs"]):
        assert "redis-password" not in group.get("rayStartParams", {})
        for container in group["template"]["spec"]["containers"]:
            names = {e["name"] for e in container.get("env", [])}
            assert not names & {"RAY_REDIS_ADDRESS", "REDIS_PASSWORD"}


@needs_crds
def test_gcs_fault_tolerance_checked_against_the_crd():
    """The CRD knows every field rendered, and refuses a misspelled or mistyped one."""
    _, validator = crd_validator("ray.io_rayservices.yaml")
    manifest = load("rayservice.yaml")
    assert schema_errors(validator, manifest) == []
    bad = copy.deepcopy(manifest)
    ft = bad["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"]
    ft["redisPasword"] = ft.pop("redisPassword")
    assert any("redisPasword" in e for e in schema_errors(validator, bad))
    bad = copy.deepcopy(manifest)
    bad["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"]["backend"] = "etcd"
    assert schema_errors(validator, bad)
