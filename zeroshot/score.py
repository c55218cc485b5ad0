"""Stage 2, `score`: pairs to NLI logits through a backend (the only stage on a device).

Pairs are sorted by length (longest first, so an out-of-memory shows on the first batch) and cut
into batches whose padded size (longest x count) stays under a token budget; each batch is one
forward pass. `score_many` is the one way to score several requests' pairs together: it joins
them, scores them in shared passes and splits the logits back per request.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from zeroshot.backends import Backend, load_backend
from zeroshot.config import BatchingConfig, ModelConfig
from zeroshot.pairs import Pairs, split


@dataclass
class ScoreStats:
    """What one `score` call did, for metrics and benchmarks."""

    batches: int = 0
    pairs: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    seconds: float = 0.0
    batch_sizes: list[int] = field(default_factory=list)

    @property
    def padding_ratio(self) -> float:
        return 1.0 - self.tokens / self.padded_tokens if self.padded_tokens else 0.0


def plan_batches(lengths: np.ndarray, batching: BatchingConfig) -> list[tuple[np.ndarray, int]]:
    """Index groups and their padded length, longest first, each under the token budget.

    Sorting alone still lets one long pair pad a whole batch of short ones; a batch also ends
    where the next pair would fill less than `min_fill` of the padded length.
    """
    budget = batching.max_batch_tokens
    if budget is None:
        raise ValueError("plan_batches needs a token budget: use BatchingConfig.for_device")
    lengths = np.asarray(lengths)
    order = np.argsort(-lengths, kind="stable")
    rounded = -(-lengths[order] // batching.pad_to_multiple_of) * batching.pad_to_multiple_of
    plan = []
    start = 0
    while start < len(order):
        padded = int(rounded[start])
        count = max(1, min(batching.max_batch_pairs, budget // padded))
        # rounded is descending: -rounded ascending, so searchsorted finds the fill cut-off.
        window = -rounded[start : start + count]
        count = max(1, int(np.searchsorted(window, -padded * batching.min_fill, side="right")))
        plan.append((order[start : start + count], padded))
        start += count
    return plan


def pad_batch(
    pairs: Pairs, indices: np.ndarray, padded: int, pad_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """(ids `[len(indices), padded]` int64, right-padded with `pad_id`; lengths)."""
    lengths = pairs.lengths[indices]
    ids = pairs.gather(indices, lengths, padded).astype(np.int64)
    ids[np.arange(padded) >= lengths[:, None]] = pad_id
    return ids, lengths


class Scorer:
    """Plans length-sorted batches and drives a backend through them."""

    def __init__(self, backend: Backend, batching: BatchingConfig | None = None):
        self.backend = backend
        self.batching = (batching or BatchingConfig()).for_device(backend.device_type)
        config = backend.config
        self.pad_token_id = int(config.pad_token_id)
        self.num_labels = backend.num_labels
        self.vocab_size = int(config.vocab_size)
        self.max_length = int(getattr(config, "max_position_embeddings", 0) or 1 << 20)

    @classmethod
    def from_config(
        cls, cfg: ModelConfig, gpu_ids=None, batching: BatchingConfig | None = None
    ) -> Scorer:
        """The backend `cfg` asks for; `gpu_ids` are the GPUs Ray assigned (None outside Ray)."""
        return cls(load_backend(cfg, gpu_ids), batching)

    @classmethod
    def from_pretrained(
        cls,
        model: str,
        revision: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        batching: BatchingConfig | None = None,
    ) -> Scorer:
        """The torch backend on `device` ('auto': a GPU when CUDA has one) in `dtype` ('auto':
        bf16 where native)."""
        cfg = ModelConfig(model=model, revision=revision, device=device, dtype=dtype)
        return cls.from_config(cfg, batching=batching)

    @property
    def device(self) -> str:
        return self.backend.device

    @property
    def dtype(self) -> str:
        return self.backend.dtype

    def score(self, pairs: Pairs) -> tuple[np.ndarray, ScoreStats]:
        """Logits `[len(pairs), num_labels]` (float32, input order) and what it cost."""
        t0 = time.perf_counter()
        backend = self.backend
        logits = np.empty((len(pairs), self.num_labels), dtype=np.float32)
        stats = ScoreStats(pairs=len(pairs), tokens=pairs.num_tokens)
        plan = plan_batches(pairs.lengths, self.batching) if len(pairs) else []
        depth = getattr(backend, "queue_depth", 0)
        queued: deque = deque()
        for indices, padded in plan:
            # On CUDA (depth 1) batch i+1 is prepared and queued behind batch i before batch
            # i is read back, so the device never waits for the host between two batches.
            inputs = backend.encode_pre(
                *pad_batch(pairs, indices, padded, self.pad_token_id),
                segments=None if pairs.segments is None else pairs.segments[indices],
            )
            queued.append((indices, backend.encode_core(inputs)))
            while len(queued) > depth:
                done, outputs = queued.popleft()
                logits[done] = backend.encode_post(outputs)
            stats.batches += 1
            stats.padded_tokens += padded * len(indices)
            stats.batch_sizes.append(len(indices))
        while queued:
            done, outputs = queued.popleft()
            logits[done] = backend.encode_post(outputs)
        stats.seconds = time.perf_counter() - t0
        return logits, stats

    def score_many(self, groups: Sequence[Pairs]) -> tuple[list[np.ndarray], ScoreStats]:
        """Each group's logits, from shared forward passes over all groups' pairs."""
        logits, stats = self.score(Pairs.concat(groups))
        return split(logits, [len(g) for g in groups]), stats

    def check(self) -> None:
        """Touch the device with a tiny op; raises when the device or model is unusable."""
        self.backend.check()
