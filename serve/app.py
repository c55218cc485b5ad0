"""The application: ingress -> classifier, composed through a DeploymentHandle.

`build_app` is the application builder named by serve/config.yaml (`serve.app:build_app`), so
`serve run serve/config.yaml`, `serve deploy` and a KubeRay RayService all build it from the
same `args`. Options here are code defaults; a Serve config file's `deployments` section
overrides them (its `ray_actor_options` replaces the dict below as a whole).
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from serve.classifier import ZeroShotClassifier
from serve.config import AppConfig
from serve.ingress import ZeroShotIngress

BACKPRESSURE = {"status_code": 503, "retry_after_s": 1}


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0)) if ray.is_initialized() else 0.0


def default_options(cfg: AppConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """(ingress, classifier) deployment options for this config, as serve/config.yaml sets
    them; used when the app is built from code (CLI, tests) rather than from that file."""
    num_gpus = cfg.num_gpus if cfg.num_gpus is not None else (1 if cluster_gpus() >= 1 else 0)
    batch = cfg.batching.max_batch_size
    ingress = {
        "max_ongoing_requests": 256,
        "max_queued_requests": 1024,
        "backpressure_config": BACKPRESSURE,
        "autoscaling_config": {
            "min_replicas": 1,
            "max_replicas": 2,
            "target_ongoing_requests": 64,
        },
        "ray_actor_options": {"num_cpus": 0.5},
    }
    classifier = {
        # Room for one batch running and the next one filling, whatever the request mix.
        "max_ongoing_requests": max(2 * batch, 8),
        "max_queued_requests": max(4 * batch, 32),
        "backpressure_config": BACKPRESSURE,
        "autoscaling_config": {
            "min_replicas": 1,
            "max_replicas": cfg.max_replicas,
            "target_ongoing_requests": max(batch, 2),
        },
        "ray_actor_options": {"num_cpus": 1, "num_gpus": num_gpus},
        "user_config": cfg.batching.model_dump(),
    }
    return ingress, classifier


def build(
    cfg: AppConfig,
    *,
    ingress_options: dict[str, Any] | None = None,
    classifier_options: dict[str, Any] | None = None,
) -> Application:
    """The bound application; `*_options` update the defaults (e.g. a tight queue in tests)."""
    ingress, classifier = default_options(cfg)
    ingress.update(ingress_options or {})
    classifier.update(classifier_options or {})
    args = cfg.model_dump()
    return ZeroShotIngress.options(**ingress).bind(
        ZeroShotClassifier.options(**classifier).bind(args), args
    )


def build_app(args: dict[str, Any]) -> Application:
    """Application builder for `import_path: serve.app:build_app`; `args` is an `AppConfig`."""
    return build(AppConfig.model_validate(args or {}))
