"""What runs the forward pass behind `Scorer`: the model (`torch`) or nothing (`null`).

Each backend has exactly three steps, as infinity's engines do, and `Scorer` only calls those:
`encode_pre` (a padded host batch onto the device), `encode_core` (the forward pass) and
`encode_post` (logits back as float32 numpy). Kept apart, the next batch can be prepared and
queued while the device still computes the current one (CUDA kernels run asynchronously until
`encode_post` reads the result; `queue_depth` says how many may be queued).
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Any, NamedTuple, Protocol

import numpy as np

from zeroshot.config import ModelConfig


class Backend(Protocol):
    config: Any  # the model's transformers config (labels, pad id, vocabulary, positions)
    num_labels: int
    device: str  # where it runs: 'cpu', 'cuda:0', ... or 'null'
    device_type: str  # 'cpu', 'cuda', ... or 'null'
    dtype: str
    # Forward passes `Scorer` may queue before it reads the oldest one back: 0 where
    # `encode_core` finishes the work itself (CPU, null), 1 where it only queues it (CUDA).
    queue_depth: int

    def encode_pre(
        self, ids: np.ndarray, lengths: np.ndarray, segments: np.ndarray | None = None
    ) -> Any:
        """`ids` [batch, padded] int64 (padding after each row's `lengths`) onto the device;
        `segments` [batch]: where each row's token type 1 begins, for models that read token
        type ids (None for the others)."""

    def encode_core(self, inputs: Any) -> Any:
        """The forward pass; may return before the device has finished."""

    def encode_post(self, outputs: Any) -> np.ndarray:
        """NLI logits `[batch, num_labels]` as float32 on the host."""

    def check(self) -> None:
        """Raise when the device or model is unusable."""


class TorchBatch(NamedTuple):
    """One padded batch on the backend's device: ids [B, T] int64, row lengths [B] int64 and,
    for models that read token type ids, where each row's type 1 begins [B] int64."""

    input_ids: Any
    lengths: Any
    segments: Any = None


class TorchBackend:
    """A transformers sequence classifier on a torch device.

    BART classifiers run through `zeroshot.fast_bart.FastBartClassifier` (exact, less work, no
    host-device synchronisation) unless `fast_forward` is False or the model is one it cannot
    run exactly; `forward` says which runs. On CUDA the three steps never wait for the device
    except in `encode_post`:

    - `encode_pre` writes ids and lengths into one pinned host buffer (torch's caching host
      allocator: reused, and not handed out again while a copy from it is in flight) and
      copies it with one non-blocking transfer; the mask and each row's last position are
      derived from the lengths on the device.
    - `encode_core` queues the forward and, behind it, a non-blocking copy of the logits into
      pinned memory and an event.
    - `encode_post` waits for that event only.

    So `queue_depth` is 1 on CUDA: `Scorer` queues batch i+1 before it reads batch i, and the
    device always has the next forward waiting while the host reads and prepares.
    """

    def __init__(self, model, fast_forward: bool = True, cuda_graphs: bool = False):
        import torch

        from zeroshot.devices import dtype_name
        from zeroshot.fast_bart import FastBartClassifier, GraphedForward, supports

        self.model = model.eval()
        self.config = model.config
        self.num_labels = int(model.config.num_labels)
        first = next(model.parameters())
        self.torch_device = first.device
        self.device = str(first.device)
        self.device_type = first.device.type
        self.dtype = dtype_name(first.dtype)
        self._cuda = self.device_type == "cuda"
        self.queue_depth = 1 if self._cuda else 0
        self._torch = torch
        self._fast = FastBartClassifier(model) if fast_forward and supports(model) else None
        # What the stock forward takes beyond ids and mask: `use_cache=False` where it has
        # the argument (BART's decoder), as the transformers pipeline passes it.
        import inspect

        params = inspect.signature(model.forward).parameters
        self._stock_kwargs = {"use_cache": False} if "use_cache" in params else {}
        self._reads_types = "token_type_ids" in params
        self.forward = "fast" if self._fast is not None else "transformers"
        self._graphs = None
        if self._fast is not None and cuda_graphs and self._cuda:
            self._graphs = GraphedForward(self._fast.forward_lengths)
            self.forward = "fast+cuda_graphs"

    @classmethod
    def load(cls, cfg: ModelConfig, gpu_ids=None) -> TorchBackend:
        from zeroshot.devices import resolve_device, resolve_dtype
        from zeroshot.loading import load_model

        device = resolve_device(cfg.device, gpu_ids)
        model = load_model(cfg.model, cfg.revision, device, resolve_dtype(cfg.dtype, device))
        return cls(model, fast_forward=cfg.fast_forward, cuda_graphs=cfg.cuda_graphs)

    def encode_pre(
        self, ids: np.ndarray, lengths: np.ndarray, segments: np.ndarray | None = None
    ) -> TorchBatch:
        torch = self._torch
        n, t = ids.shape
        typed = segments is not None and self._reads_types
        if not self._cuda:
            lengths = np.asarray(lengths, dtype=np.int64)
            seg = torch.from_numpy(np.asarray(segments, dtype=np.int64)) if typed else None
            return TorchBatch(torch.from_numpy(ids), torch.from_numpy(lengths), seg)
        host = torch.empty(n * t + (2 if typed else 1) * n, dtype=torch.int64, pin_memory=True)
        flat = host.numpy()
        flat[: n * t].reshape(n, t)[...] = ids
        flat[n * t : n * t + n] = lengths
        if typed:
            flat[n * t + n :] = segments
        dev = host.to(self.torch_device, non_blocking=True)
        seg = dev[n * t + n :] if typed else None
        return TorchBatch(dev[: n * t].view(n, t), dev[n * t : n * t + n], seg)

    def encode_core(self, inputs: TorchBatch):
        torch = self._torch
        # The model's device as the current one: events, streams and graph captures follow
        # it (a replica may hold cuda:1 while this thread's current device is cuda:0).
        on_device = torch.cuda.device(self.torch_device) if self._cuda else nullcontext()
        with torch.inference_mode(), on_device:
            if self._graphs is not None:
                logits = self._graphs(inputs.input_ids, inputs.lengths)
            elif self._fast is not None:
                logits = self._fast.forward_lengths(inputs.input_ids, inputs.lengths)
            else:
                logits = self.model(**self._stock_inputs(inputs)).logits
            logits = logits.float()
            if not self._cuda:
                return logits
            host = torch.empty(logits.shape, dtype=torch.float32, pin_memory=True)
            host.copy_(logits, non_blocking=True)
            done = torch.cuda.Event()
            done.record()
            return host, done

    def _stock_inputs(self, inputs: TorchBatch) -> dict:
        """The stock forward's arguments: ids, the mask, and the token type ids where the
        pairs carry them (0 up to each row's segment start, 1 to its end, 0 on padding)."""
        from zeroshot.fast_bart import lengths_to_mask

        ids, lengths, segments = inputs
        cols = self._torch.arange(ids.shape[1], device=ids.device)[None, :]
        kwargs = {
            "input_ids": ids,
            "attention_mask": lengths_to_mask(lengths, ids.shape[1]).long(),
            **self._stock_kwargs,
        }
        if segments is not None:
            second = (cols >= segments[:, None]) & (cols < lengths[:, None])
            kwargs["token_type_ids"] = second.long()
        return kwargs

    def encode_post(self, outputs) -> np.ndarray:
        if not self._cuda:
            return outputs.numpy()
        host, done = outputs
        done.synchronize()
        # A copy: the pinned block goes back to torch's cache, not to the caller.
        return host.numpy().copy()

    def check(self) -> None:
        # Not while a CUDA graph is being captured on this device (it would void the capture).
        with self._graphs.lock if self._graphs is not None else nullcontext():
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
    queue_depth = 0

    def __init__(self, config, pairs_per_s: float | None = None):
        self.config = config
        self.num_labels = int(config.num_labels)
        self.pairs_per_s = pairs_per_s

    @classmethod
    def load(cls, cfg: ModelConfig) -> NullBackend:
        from zeroshot.loading import load_config

        return cls(load_config(cfg.model, cfg.revision), cfg.null_pairs_per_s)

    def encode_pre(
        self, ids: np.ndarray, lengths: np.ndarray, segments: np.ndarray | None = None
    ) -> int:
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
