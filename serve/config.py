"""Typed configuration of the Serve app: one object fed by the CLI, serve/config.yaml's `args`
and the KubeRay `serveConfigV2` (which embeds the same YAML). It also computes every Serve
option of both deployments (`deployment_options`, as Ray Serve LLM's `get_serve_options`):
no decorator and no config file carries a tuning value of its own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from serve import fast_ingress
from zeroshot.config import BatchingConfig, Limits, ModelConfig

APP_NAME = "zeroshot"
INGRESS_NAME = "ZeroShotIngress"
CLASSIFIER_NAME = "ZeroShotClassifier"

# What a full queue answers (the API's overload shape: 503 + Retry-After).
BACKPRESSURE = {"status_code": 503, "retry_after_s": 1}


class ServeBatching(BaseModel):
    """How the classifier deployment forms `@serve.batch` batches and cuts them into forward
    passes. This is the classifier's `user_config`: a Serve config file can retune it on a running
    app (Serve calls `reconfigure`, no replica restart)."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(
        128,
        ge=1,
        description="Most NLI pairs in one @serve.batch call, from any number of requests "
        "(the batch is sized in pairs, not in requests). 1 turns cross-request batching off.",
    )
    batch_wait_timeout_s: float = Field(
        0.0,
        ge=0.0,
        description="How long a batch waits for more pairs when the device is idle (seconds). "
        "Under load each batch is what arrived during the previous forward pass, so 0 (an idle "
        "device runs a lone request at once) costs no throughput; raising it trades a lone "
        "request's latency for fuller batches at light load.",
    )
    forward: BatchingConfig = Field(
        default_factory=BatchingConfig,
        description="How one @serve.batch call is cut into forward passes: its pairs are sorted "
        "by length and cut under a padded-token budget (by default one that suits the device).",
    )


class ReplicaSettings(BaseModel):
    """Replicas and resources of one deployment."""

    model_config = ConfigDict(extra="forbid")

    min_replicas: int = Field(1, ge=0, description="Fewest replicas the autoscaler keeps.")
    max_replicas: int = Field(1, ge=1, description="Most replicas the autoscaler may start.")
    num_cpus: float = Field(1.0, ge=0, description="CPUs each replica reserves.")
    upscale_delay_s: float = Field(
        10.0, ge=0, description="Load must stay above target this long before a replica is added."
    )
    downscale_delay_s: float = Field(
        300.0, ge=0, description="Load must stay below target this long before one is removed."
    )
    health_check_period_s: float = Field(
        10.0, gt=0, description="Seconds between Serve's health checks of a replica."
    )
    health_check_timeout_s: float = Field(
        30.0, gt=0, description="A health check slower than this counts as failed."
    )
    graceful_shutdown_timeout_s: float = Field(
        20.0, ge=0, description="How long a stopping replica may finish the requests it holds."
    )
    access_log: bool = Field(
        False,
        description="Serve's own access log line per call in the replica's log. Off by default: "
        "the ingress logs each classifier call with the ids of the requests it carried, and "
        "every refusal and failure with its request id; a line per request costs ~8% of the "
        "ingress's CPU at thousands of requests/s.",
    )

    @model_validator(mode="after")
    def _bounds(self) -> ReplicaSettings:
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must not exceed max_replicas")
        return self

    def options(self, target_ongoing_requests: float) -> dict[str, Any]:
        """The Serve options these settings decide."""
        return {
            "autoscaling_config": {
                "min_replicas": self.min_replicas,
                "max_replicas": self.max_replicas,
                "target_ongoing_requests": target_ongoing_requests,
                "upscale_delay_s": self.upscale_delay_s,
                "downscale_delay_s": self.downscale_delay_s,
            },
            "health_check_period_s": self.health_check_period_s,
            "health_check_timeout_s": self.health_check_timeout_s,
            "graceful_shutdown_timeout_s": self.graceful_shutdown_timeout_s,
            "ray_actor_options": {"num_cpus": self.num_cpus},
            "logging_config": {"enable_access_log": self.access_log},
        }


class IngressSettings(ReplicaSettings):
    """The HTTP ingress (CPU: JSON, validation, tokenization, assembly)."""

    max_replicas: int = Field(
        2, ge=1, description="Most ingress replicas the autoscaler may start."
    )
    max_ongoing_requests: int = Field(
        256,
        ge=1,
        description="Requests one ingress replica holds at once; it holds each while the "
        "classifier scores it, hence many.",
    )
    max_queued_requests: int = Field(
        1024, ge=-1, description="Requests queued for the ingress replicas (-1: unbounded)."
    )
    target_ongoing_requests: float = Field(
        64, gt=0, description="Ongoing requests per replica the autoscaler aims for."
    )
    max_calls_in_flight: int = Field(
        4,
        ge=1,
        description="Most calls to the classifier one ingress replica keeps in flight; "
        "requests arriving meanwhile wait and leave together in the next call (one tokenizer "
        "call, one handle call for tens of requests under load). A call leaves at once when "
        "none is in flight, another only with half a batch (max_batch_size / 2 pairs) waiting: "
        "light load makes few full calls, heavy load overlaps them (and shows the autoscaler "
        "the classifier's load).",
    )
    hedge_after_s: float = Field(
        1.0,
        ge=0,
        description="A classifier call unanswered this long (or 3x the recent calls' 95th "
        "percentile, when longer) is sent once more, to another replica, and the first answer "
        "wins: a replica cut off by the network holds no call slot till the deadline. At most "
        "a tenth of the calls are hedged over time (serve.hedge). 0: never hedge.",
    )


class IngressState(BaseModel):
    """The ingress's `user_config`: what a running app can switch on every ingress replica at
    once (Serve calls `reconfigure`, no restart)."""

    model_config = ConfigDict(extra="forbid")

    draining: bool = Field(
        False,
        description="Refuse new requests (JSON 503 + Retry-After, /healthz 503) while the "
        "ones in flight finish: the first step of a graceful stop.",
    )


class ClassifierSettings(ReplicaSettings):
    """The classifier deployment (the model on a GPU, or a CPU)."""

    max_replicas: int = Field(
        1, ge=1, description="Most classifier replicas (a GPU each) the autoscaler may start."
    )

    num_gpus: float | None = Field(
        None,
        ge=0,
        description="GPUs per classifier replica (fractions share a GPU); None means 1 when the "
        "Ray cluster has a GPU, else 0.",
    )
    torch_threads: int | None = Field(
        None,
        ge=1,
        description="Intra-op threads of a classifier replica on CPU; None keeps Ray's default "
        "(OMP_NUM_THREADS = the replica's num_cpus).",
    )
    max_models_per_replica: int | None = Field(
        None,
        ge=1,
        description="Models one classifier replica keeps loaded when the app serves several "
        "(its GPU holds their weights); a request for another one loads it in place of the "
        "least recently used. None means all of them.",
    )
    # A device op answers the health check; the first one on a busy GPU can be slow.
    health_check_timeout_s: float = Field(
        60.0, gt=0, description="A health check slower than this counts as failed."
    )
    graceful_shutdown_timeout_s: float = Field(
        30.0, ge=0, description="How long a stopping replica may finish the batches it holds."
    )


class ServedModel(BaseModel):
    """One model of an app that serves several: requests name it by `id`."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    id: str | None = Field(
        None,
        min_length=1,
        description="The name requests use (the `model` field, `parameters.model`, "
        "/models/{id}); None means `model` as given.",
    )
    model: str = Field(min_length=1, description="Hugging Face hub id or local directory.")
    revision: str | None = Field(
        None, description="Hub revision (branch, tag or commit); None means the default branch."
    )

    @property
    def name(self) -> str:
        return self.id or self.model


class AppConfig(ModelConfig):
    """Arguments of the Serve application (`serve.app:build_app`), as in serve/config.yaml.

    Inherits model, revision, device, dtype and backend from the engine's `ModelConfig`."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    models: list[ServedModel] = Field(
        default_factory=list,
        description="The models to serve, when more than one: each request picks one by id, "
        "and one naming none gets the first. Empty means the one `model` (and `revision`).",
    )
    limits: Limits = Field(default_factory=Limits, description="Per-request input limits.")
    batching: ServeBatching = Field(
        default_factory=ServeBatching,
        description="The classifier's user_config (retunable on a running app).",
    )
    request_timeout_s: float = Field(
        30.0,
        gt=0,
        # HAProxy replays a request unanswered after its server timeout (a lost replica's):
        # every live answer, a deadline's 503 included, must come before that.
        le=fast_ingress.SERVER_TIMEOUT_S - 5,
        description="Most time a request may take in the ingress, waiting included: past it "
        "the answer is 503 deadline_exceeded (Retry-After). A request that would wait longer "
        "than this for the work ahead of it (at the rate measured) is refused at once with 503 "
        "overloaded instead of being queued. At most 5 s under the HAProxy server timeout "
        f"({fast_ingress.SERVER_TIMEOUT_S} s), after which a request counts as lost and is "
        "replayed on another replica.",
    )
    max_body_bytes: int = Field(
        1 << 20,
        ge=64,
        description="Largest request body accepted, in bytes; larger bodies get 413 before "
        "they are read in full.",
    )
    api_key: str | None = Field(
        None,
        description="When set, every route except /healthz and the docs needs "
        "`Authorization: Bearer <key>`. Prefer api_key_env so the key stays out of config files.",
    )
    api_key_env: str | None = Field(
        None,
        description="Name of an environment variable (read on the ingress replicas) holding the "
        "API key; used when api_key is not set. An unset or empty variable means no key.",
    )
    ingress: IngressSettings = Field(
        default_factory=IngressSettings, description="Replicas and resources of the ingress."
    )
    classifier: ClassifierSettings = Field(
        default_factory=ClassifierSettings,
        description="Replicas and resources of the classifier.",
    )

    @model_validator(mode="after")
    def _key_not_empty(self) -> AppConfig:
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("api_key must not be empty; leave it unset to turn auth off")
        return self

    @model_validator(mode="before")
    @classmethod
    def _model_is_the_first_served(cls, data: Any) -> Any:
        # With `models`, `model` and `revision` are the first one's (the default, and what
        # code that knows one model reads); given apart, they must agree with it.
        if not isinstance(data, dict) or not data.get("models"):
            return data
        first = data["models"][0]
        first = first.model_dump() if isinstance(first, BaseModel) else dict(first)
        for key in ("model", "revision"):
            if key in data and data[key] != first.get(key):
                raise ValueError(
                    f"give `models` or `model` (and `revision`), not both: {key} "
                    f"{data[key]!r} is not the first model's ({first.get(key)!r})"
                )
        return {**data, "model": first.get("model"), "revision": first.get("revision")}

    @model_validator(mode="after")
    def _ids_differ(self) -> AppConfig:
        names = [m.name for m in self.models]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"model ids must differ; served twice: {', '.join(twice)}")
        return self

    @property
    def served(self) -> list[ServedModel]:
        """The served models, the default (a request naming none) first."""
        return self.models or [ServedModel(model=self.model, revision=self.revision)]

    @property
    def default_model(self) -> str:
        return self.served[0].name

    def for_model(self, model_id: str) -> AppConfig:
        """This config with `model` and `revision` of the served model `model_id` (what the
        engine's loaders read)."""
        served = next(m for m in self.served if m.name == model_id)
        return self.model_copy(
            update={"model": served.model, "revision": served.revision, "models": []}
        )

    def models_per_replica(self) -> int:
        """How many models a classifier replica keeps loaded (the least recently used goes
        when another one is needed)."""
        return min(self.classifier.max_models_per_replica or len(self.served), len(self.served))

    def resolved_api_key(self) -> str | None:
        """The key to enforce, from api_key or the api_key_env variable (read where called)."""
        if self.api_key:
            return self.api_key
        if self.api_key_env:
            return os.environ.get(self.api_key_env) or None
        return None

    def for_machine(self, cores: int, gpus: float) -> AppConfig:
        """How `zeroshot serve` sizes an app on one machine of `cores` CPUs and `gpus` GPUs;
        fields the user set stay as set.

        CPU only, the forward pass is the bottleneck: the classifier's torch gets every core.
        With GPUs, each GPU replica gets two ingress replicas where the cores allow (one core
        each, one left for HAProxy and Ray): one ingress replica parses, encodes and
        assembles ~2,400 one-text requests/s (~10k pairs/s) on one core here, while an H100
        scores ~19.5k pairs/s, and two keep a call always waiting on the device."""
        classifier, ingress = self.classifier, self.ingress
        gpu_replicas = classifier.max_replicas if self.classifier_gpus(gpus) else 0
        if not gpu_replicas:
            if classifier.torch_threads is None:
                classifier = classifier.model_copy(update={"torch_threads": max(1, cores)})
        elif "min_replicas" not in ingress.model_fields_set:
            wanted = max(1, min(2 * gpu_replicas, cores - gpu_replicas - 1))
            if "max_replicas" in ingress.model_fields_set:
                wanted = min(wanted, ingress.max_replicas)
            most = max(wanted, ingress.max_replicas)
            ingress = ingress.model_copy(update={"min_replicas": wanted, "max_replicas": most})
        return self.model_copy(update={"classifier": classifier, "ingress": ingress})

    def classifier_gpus(self, cluster_gpus: float) -> float:
        if self.classifier.num_gpus is not None:
            return self.classifier.num_gpus
        return 1.0 if cluster_gpus >= 1 and self.backend == "torch" else 0.0

    def deployment_options(self, cluster_gpus: float = 0.0) -> dict[str, dict[str, Any]]:
        """Every Serve option of both deployments, by deployment name. `cluster_gpus`: the GPUs
        of the Ray cluster the app is built on (decides `num_gpus: None`)."""
        ingress = self.ingress
        batch = self.batching.max_batch_size
        classifier = self.classifier.options(
            # The classifier's ongoing requests are ingress calls; a second call from an ingress
            # replica leaves only with half a batch waiting, so two per replica means the
            # device is busy all the time with work queued behind: add a replica then.
            target_ongoing_requests=2
        )
        classifier["ray_actor_options"]["num_gpus"] = self.classifier_gpus(cluster_gpus)
        return {
            INGRESS_NAME: {
                **ingress.options(ingress.target_ongoing_requests),
                "max_ongoing_requests": ingress.max_ongoing_requests,
                "max_queued_requests": ingress.max_queued_requests,
                "backpressure_config": BACKPRESSURE,
                "user_config": IngressState().model_dump(),
            },
            CLASSIFIER_NAME: {
                **classifier,
                # Room for one batch running and the next one filling (a request has at least
                # one pair), and a bounded queue in front of it.
                "max_ongoing_requests": max(2 * batch, 8),
                "max_queued_requests": max(4 * batch, 32),
                "backpressure_config": BACKPRESSURE,
                "user_config": self.batching.model_dump(),
            },
        }


@dataclass(frozen=True)
class DeploymentNeeds:
    """Replica counts and per-replica resources of one deployment, read from its Serve
    options: what a cluster (or one machine) must hold for it."""

    name: str
    min_replicas: int
    max_replicas: int
    num_cpus: float
    num_gpus: float


def deployment_needs(options: dict[str, dict[str, Any]]) -> dict[str, DeploymentNeeds]:
    """`DeploymentNeeds` of the ingress and the classifier, from Serve options as
    `AppConfig.deployment_options` computes them (or a Serve config file overrides them)."""
    out = {}
    for name in (INGRESS_NAME, CLASSIFIER_NAME):
        opts = options[name]
        actor = opts.get("ray_actor_options") or {}
        auto = opts.get("autoscaling_config")
        if auto:
            lo, hi = int(auto.get("min_replicas", 1)), int(auto.get("max_replicas", 1))
        else:
            lo = hi = int(opts.get("num_replicas", 1))
        cpus, gpus = actor.get("num_cpus"), actor.get("num_gpus")
        # Serve's defaults for an unset value: one CPU, no GPU.
        out[name] = DeploymentNeeds(
            name, lo, hi, 1.0 if cpus is None else float(cpus), float(gpus or 0)
        )
    return out


def shortfall(needs: dict[str, DeploymentNeeds], cpus: float, gpus: float) -> str | None:
    """Why the deployments' minimum replicas cannot all be placed on `cpus` and `gpus`, or None.
    (Serve would start such an app with a replica waiting for resources forever.)"""
    parts = []
    for resource, have in (("CPUs", cpus), ("GPUs", gpus)):
        each = {
            n.name: (n.min_replicas, n.num_cpus if resource == "CPUs" else n.num_gpus)
            for n in needs.values()
        }
        want = sum(count * per for count, per in each.values())
        if want > have + 1e-9:
            held = ", ".join(f"{name} {c} x {per:g}" for name, (c, per) in each.items() if per)
            parts.append(f"{want:g} {resource} ({held}); Ray has {have:g}")
    return "; ".join(parts) or None
