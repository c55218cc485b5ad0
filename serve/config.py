"""Typed configuration of the Serve app: one object fed by the CLI, serve/config.yaml's `args`
and the KubeRay `serveConfigV2` (which embeds the same YAML)."""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict, Field, model_validator

from zeroshot.config import BatchingConfig, Limits, ModelConfig

APP_NAME = "zeroshot"
INGRESS_NAME = "ZeroShotIngress"
CLASSIFIER_NAME = "ZeroShotClassifier"


class ServeBatching(BaseModel):
    """How the classifier deployment forms `@serve.batch` batches and cuts them into forward
    passes. This is the classifier's `user_config`: a Serve config file can retune it on a running
    app (Serve calls `reconfigure`, no replica restart)."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(
        64,
        ge=1,
        description="Most NLI pairs in one @serve.batch call, from any number of requests "
        "(the batch is sized in pairs, not in requests). 1 turns cross-request batching off.",
    )
    max_batch_tokens: int = Field(
        16384,
        ge=8,
        description="Padded-token budget of one @serve.batch call: a batch closes before the "
        "sum over its parts of (longest pair x pairs) would exceed it. A single pair longer "
        "than the budget still runs, alone.",
    )
    batch_wait_timeout_s: float = Field(
        0.01,
        ge=0.0,
        description="How long the first pair of a batch waits for others before the batch runs "
        "anyway (seconds).",
    )
    forward: BatchingConfig = Field(
        default_factory=BatchingConfig,
        description="How one @serve.batch call is cut into forward passes: its pairs are sorted "
        "by length and cut under this padded-token budget. On CPUs a smaller budget than the "
        "batch's cuts padding; on GPUs the same budget means one forward per batch.",
    )


class AppConfig(ModelConfig):
    """Arguments of the Serve application (`serve.app:build_app`), as in serve/config.yaml.

    Inherits model, revision, device and dtype from the engine's `ModelConfig`. Deployment
    options (replicas, queues, actor resources) live in the Serve config file's `deployments`
    section, which overrides the code defaults in `serve/app.py`."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    limits: Limits = Field(default_factory=Limits, description="Per-request input limits.")
    batching: ServeBatching = Field(
        default_factory=ServeBatching,
        description="Default classifier user_config; a Serve config file's user_config for "
        f"{CLASSIFIER_NAME} replaces it.",
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
    num_gpus: float | None = Field(
        None,
        ge=0,
        description="GPUs per classifier replica (fractions allowed) when the Serve config file "
        "does not set its ray_actor_options; None means 1 when the Ray cluster has a GPU, else 0.",
    )
    torch_threads: int | None = Field(
        None,
        ge=1,
        description="Intra-op threads of a classifier replica on CPU; None keeps Ray's default "
        "(OMP_NUM_THREADS = the replica's num_cpus).",
    )
    max_replicas: int = Field(
        1,
        ge=1,
        description="Most classifier replicas the autoscaler may start, when the Serve config "
        "file does not set its autoscaling_config.",
    )

    @model_validator(mode="after")
    def _key_not_empty(self) -> AppConfig:
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("api_key must not be empty; leave it unset to turn auth off")
        return self

    def resolved_api_key(self) -> str | None:
        """The key to enforce, from api_key or the api_key_env variable (read where called)."""
        if self.api_key:
            return self.api_key
        if self.api_key_env:
            return os.environ.get(self.api_key_env) or None
        return None

    def model_settings(self) -> ModelConfig:
        return ModelConfig(
            model=self.model, revision=self.revision, device=self.device, dtype=self.dtype
        )
