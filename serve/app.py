"""The application: ingress -> classifier, composed through a DeploymentHandle.

`build_app` is the application builder named by serve/config.yaml (`serve.app:build_app`), so
`serve run serve/config.yaml`, `serve deploy`, a KubeRay RayService and `zeroshot serve` all
build it from an `AppConfig`, whose `deployment_options` decide every Serve option.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from serve.classifier import ZeroShotClassifier
from serve.config import CLASSIFIER_NAME, INGRESS_NAME, AppConfig
from serve.ingress import ZeroShotIngress


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0)) if ray.is_initialized() else 0.0


def build(
    cfg: AppConfig,
    *,
    overrides: dict[str, dict[str, Any]] | None = None,
    version: str | None = None,
) -> Application:
    """The bound application. `overrides` (by deployment name) replace computed options, for
    tests and benchmarks that need an exact setting (a one-slot queue, a fixed replica).

    `version` pins both deployments' version: Serve gives each `serve.run` a new random one,
    which replaces every replica; pinned, a second `serve.run` that changes only a
    `user_config` reconfigures the live replicas (how `zeroshot serve` drains on stop)."""
    options = cfg.deployment_options(cluster_gpus())
    for name, extra in (overrides or {}).items():
        options[name].update(extra)
    args = cfg.model_dump()
    classifier = ZeroShotClassifier.options(**options[CLASSIFIER_NAME])
    ingress = ZeroShotIngress.options(**options[INGRESS_NAME])
    if version is not None:
        # Ray 2.60 refuses `version` in `.options()` but still deploys `_version` when set.
        classifier._version = ingress._version = version
    return ingress.bind(classifier.bind(args), args)


def build_app(args: dict[str, Any]) -> Application:
    """Application builder for `import_path: serve.app:build_app`; `args` is an `AppConfig`."""
    return build(AppConfig.model_validate(args or {}))
