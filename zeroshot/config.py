"""Typed configuration shared by the Python API, the CLI, Serve and Ray Data."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_MODEL = "valhalla/distilbart-mnli-12-1"
DEFAULT_TEMPLATE = "This example is {}."

DType = Literal["auto", "float32", "bfloat16", "float16"]
Backend = Literal["torch", "null"]


class Limits(BaseModel):
    """Bounds on one request, enforced by `encode` before any tokenization work."""

    model_config = ConfigDict(extra="forbid")

    max_labels: int = Field(100, ge=1, description="Most candidate labels one request may carry.")
    max_sequences: int = Field(
        256, ge=1, description="Most sequences (texts) one request may carry."
    )
    max_chars: int = Field(
        100_000,
        ge=1,
        description="Most characters in one sequence; longer texts are refused, not truncated "
        "(token truncation to the model's limit still applies below this).",
    )


class ModelConfig(BaseModel):
    """Which model to load and how to run it."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field(DEFAULT_MODEL, description="Hugging Face hub id or local directory.")
    revision: str | None = Field(
        None, description="Hub revision (branch, tag or commit); None means the default branch."
    )
    device: str = Field(
        "auto",
        description="'auto' (the GPU Ray assigned, or outside Ray the first GPU CUDA sees; "
        "else the CPU), 'cpu', 'cuda' or 'cuda:N'.",
    )
    dtype: DType = Field(
        "auto",
        description="'auto' picks bfloat16 where the hardware runs it natively (CUDA with bf16, "
        "a CPU with AMX or AVX512-BF16) and float32 elsewhere; 'float32' is the exact mode.",
    )
    backend: Backend = Field(
        "torch",
        description="'torch' runs the model; 'null' returns fixed logits of the right shape "
        "without loading weights (the model path still gives tokenizer and config), so every "
        "other stage can be load-tested and measured on its own.",
    )
    null_pairs_per_s: float | None = Field(
        None,
        gt=0,
        description="With backend 'null': take as long as a device scoring this many pairs "
        "per second would (e.g. 19500 for an H100), to see whether the rest keeps up; None "
        "answers at once.",
    )
    fast_forward: bool = Field(
        True,
        description="With backend 'torch': run BART classifiers through zeroshot.fast_bart, "
        "the exact throughput forward (the last decoder layer at the one position the head "
        "reads, no host-device synchronisation); a model it cannot run exactly falls back to "
        "transformers' own forward. False always runs transformers' forward (for debugging "
        "and comparison).",
    )
    cuda_graphs: bool = Field(
        False,
        description="On CUDA with the fast forward: capture one CUDA graph per batch shape "
        "(rows rounded up to a bucket, at most 128 graphs) and replay it instead of launching "
        "every kernel from Python. Off by default until measured on a GPU "
        "(python -m benchmarks.gpu reports both).",
    )


# A CPU forward pass costs in proportion to padded tokens, so small, tightly sorted batches
# win there; an accelerator wants large batches to fill its cores.
CPU_MAX_BATCH_TOKENS = 2048
DEVICE_MAX_BATCH_TOKENS = 16384


class BatchingConfig(BaseModel):
    """How `score` cuts sorted pairs into forward passes."""

    model_config = ConfigDict(extra="forbid")

    max_batch_tokens: int | None = Field(
        None,
        ge=1,
        description="Budget of padded tokens (longest pair x pairs) in one forward pass. None: "
        f"{DEVICE_MAX_BATCH_TOKENS} on a GPU, {CPU_MAX_BATCH_TOKENS} on a CPU.",
    )
    max_batch_pairs: int = Field(
        256, ge=1, description="Most pairs in one forward pass, whatever their length."
    )
    pad_to_multiple_of: int = Field(
        8, ge=1, description="Right-pad each batch to a multiple of this length (kernel-friendly)."
    )
    min_fill: float = Field(
        0.75,
        ge=0.0,
        le=1.0,
        description="A pair joins a batch only if its (rounded) length is at least this fraction "
        "of the batch's padded length, so padding never wastes more than 1 - min_fill of a "
        "pair's compute; 0 packs by the token budget alone.",
    )

    def for_device(self, device_type: str) -> BatchingConfig:
        """This config with the token budget decided for a device type ('cpu', 'cuda', ...)."""
        if self.max_batch_tokens is not None:
            return self
        budget = CPU_MAX_BATCH_TOKENS if device_type == "cpu" else DEVICE_MAX_BATCH_TOKENS
        return self.model_copy(update={"max_batch_tokens": budget})
