"""What runs the forward pass behind `Scorer`: the model (`torch`) or nothing (`null`).

Each backend has exactly three steps, as infinity's engines do, and `Scorer` only calls those:
`encode_pre` (a padded host batch onto the device), `encode_core` (the forward pass) and
`encode_post` (logits back as float32 numpy). Kept apart, the next batch can be prepared while
the device still computes the current one (CUDA kernels run asynchronously until
`encode_post` reads the result).
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import numpy as np

from zeroshot.config import ModelConfig


class Backend(Protocol):
    config: Any  # the model's transformers config (labels, pad id, vocabulary, positions)
    num_labels: int
    device: str  # where it runs: 'cpu', 'cuda:0', ... or 'null'
    device_type: str  # 'cpu', 'cuda', ... or 'null'
    dtype: str

    def encode_pre(self, ids: np.ndarray, lengths: np.ndarray) -> Any:
        """`ids` [batch, padded] int64 (padding after each row's `lengths`) onto the device."""

    def encode_core(self, inputs: Any) -> Any:
        """The forward pass; may return before the device has finished."""

    def encode_post(self, outputs: Any) -> np.ndarray:
        """NLI logits `[batch, num_labels]` as float32 on the host."""

    def check(self) -> None:
        """Raise when the device or model is unusable."""


class TorchBackend:
    """A transformers sequence classifier on a torch device."""

    def __init__(self, model):
        import torch

        from zeroshot.devices import dtype_name

        self.model = model.eval()
        self.config = model.config
        self.num_labels = int(model.config.num_labels)
        first = next(model.parameters())
        self.torch_device = first.device
        self.device = str(first.device)
        self.device_type = first.device.type
        self.dtype = dtype_name(first.dtype)
        # Page-locked host memory lets the copy to the GPU run asynchronously.
        self._pin = self.device_type == "cuda"
        self._torch = torch

    @classmethod
    def load(cls, cfg: ModelConfig, gpu_ids=None) -> TorchBackend:
        from zeroshot.devices import resolve_device, resolve_dtype
        from zeroshot.loading import load_model

        device = resolve_device(cfg.device, gpu_ids)
        return cls(load_model(cfg.model, cfg.revision, device, resolve_dtype(cfg.dtype, device)))

    def encode_pre(self, ids: np.ndarray, lengths: np.ndarray):
        torch = self._torch
        mask = (np.arange(ids.shape[1]) < lengths[:, None]).astype(np.int64)
        host = (torch.from_numpy(ids), torch.from_numpy(mask))
        if self._pin:
            host = tuple(t.pin_memory() for t in host)
        return tuple(t.to(self.torch_device, non_blocking=True) for t in host)

    def encode_core(self, inputs):
        input_ids, attention_mask = inputs
        with self._torch.inference_mode():
            return self.model(
                input_ids=input_ids, attention_mask=attention_mask, use_cache=False
            ).logits

    def encode_post(self, outputs) -> np.ndarray:
        return outputs.float().cpu().numpy()

    def check(self) -> None:
        x = self._torch.ones(2, device=self.torch_device)
        if float((x + x).sum().item()) != 4.0:
            raise RuntimeError(f"device {self.device} returned a wrong result")


class NullBackend:
    """Fixed logits (all zero: every label scores the same) of the right shape, no weights.

    The debug engine: encode, batching, transport and assemble run for real around it, so load
    tests measure the machinery alone. With `pairs_per_s` it takes as long as a device of that
    speed would, so a CPU box can show whether the machinery would keep a GPU busy.
    """

    device = device_type = "null"
    dtype = "float32"

    def __init__(self, config, pairs_per_s: float | None = None):
        self.config = config
        self.num_labels = int(config.num_labels)
        self.pairs_per_s = pairs_per_s

    @classmethod
    def load(cls, cfg: ModelConfig) -> NullBackend:
        from zeroshot.loading import load_config

        return cls(load_config(cfg.model, cfg.revision), cfg.null_pairs_per_s)

    def encode_pre(self, ids: np.ndarray, lengths: np.ndarray) -> int:
        return len(lengths)

    def encode_core(self, n: int) -> np.ndarray:
        if self.pairs_per_s:
            time.sleep(n / self.pairs_per_s)
        return np.zeros((n, self.num_labels), dtype=np.float32)

    def encode_post(self, outputs: np.ndarray) -> np.ndarray:
        return outputs

    def check(self) -> None:
        return None


def load_backend(cfg: ModelConfig, gpu_ids=None) -> Backend:
    """The backend `cfg` asks for; `gpu_ids` are the GPUs Ray assigned (None outside Ray)."""
    if cfg.backend == "null":
        return NullBackend.load(cfg)
    return TorchBackend.load(cfg, gpu_ids)
