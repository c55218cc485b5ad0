"""Stage 2, `score`: the only stage that touches torch devices.

Pairs are sorted by length (longest first, so an out-of-memory shows on the first batch) and cut
into batches whose padded size (longest x count) stays under a token budget; each batch is one
forward pass returning the NLI logits as float32.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from zeroshot.config import BatchingConfig


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


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def plan_batches(lengths: np.ndarray, batching: BatchingConfig) -> list[tuple[np.ndarray, int]]:
    """Index groups and their padded length, longest first, each under the token budget.

    Sorting alone still lets one long pair pad a whole batch of short ones; a batch also ends
    where the next pair would fill less than `min_fill` of the padded length.
    """
    lengths = np.asarray(lengths)
    order = np.argsort(-lengths, kind="stable")
    rounded = -(-lengths[order] // batching.pad_to_multiple_of) * batching.pad_to_multiple_of
    plan = []
    start = 0
    while start < len(order):
        padded = int(rounded[start])
        count = max(1, min(batching.max_batch_pairs, batching.max_batch_tokens // padded))
        # rounded is descending: -rounded ascending, so searchsorted finds the fill cut-off.
        window = -rounded[start : start + count]
        count = max(1, int(np.searchsorted(window, -padded * batching.min_fill, side="right")))
        plan.append((order[start : start + count], padded))
        start += count
    return plan


def pad_batch(
    pairs: Sequence[np.ndarray], indices: np.ndarray, padded: int, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    ids = np.full((len(indices), padded), pad_id, dtype=np.int64)
    mask = np.zeros((len(indices), padded), dtype=np.int64)
    for row, i in enumerate(indices):
        n = len(pairs[i])
        ids[row, :n] = pairs[i]
        mask[row, :n] = 1
    return torch.from_numpy(ids), torch.from_numpy(mask)


class Scorer:
    """Holds the model on its device and turns pair ids into NLI logits."""

    def __init__(
        self,
        model: torch.nn.Module,
        pad_token_id: int,
        batching: BatchingConfig | None = None,
    ):
        self.model = model.eval()
        self.pad_token_id = int(pad_token_id)
        self.batching = batching or BatchingConfig()
        first = next(model.parameters())
        self.device, self.dtype = first.device, first.dtype
        self.num_labels = int(model.config.num_labels)

    @classmethod
    def from_pretrained(
        cls,
        model: str,
        revision: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        batching: BatchingConfig | None = None,
    ) -> Scorer:
        """Load the weights on `device` ('auto': CUDA when visible) in `dtype` ('auto': bf16 where
        native). The pad id comes from the model config, so no tokenizer is needed."""
        from zeroshot.devices import resolve_device, resolve_dtype
        from zeroshot.loading import load_model

        torch_device = resolve_device(device)
        weights = load_model(model, revision, torch_device, resolve_dtype(dtype, torch_device))
        return cls(weights, weights.config.pad_token_id, batching)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            out = self.model(
                input_ids=input_ids.to(self.device, non_blocking=True),
                attention_mask=attention_mask.to(self.device, non_blocking=True),
                use_cache=False,
            )
            return out.logits.float()

    def score(self, pairs: Sequence[np.ndarray]) -> np.ndarray:
        return self.score_with_stats(pairs)[0]

    def score_with_stats(self, pairs: Sequence[np.ndarray]) -> tuple[np.ndarray, ScoreStats]:
        """Logits `[len(pairs), num_labels]` (float32, input order) and what it cost."""
        t0 = time.perf_counter()
        logits = np.empty((len(pairs), self.num_labels), dtype=np.float32)
        stats = ScoreStats(pairs=len(pairs))
        if not pairs:
            return logits, stats
        lengths = np.fromiter((len(p) for p in pairs), dtype=np.int64, count=len(pairs))
        stats.tokens = int(lengths.sum())
        for indices, padded in plan_batches(lengths, self.batching):
            ids, mask = pad_batch(pairs, indices, padded, self.pad_token_id)
            logits[indices] = self.forward(ids, mask).cpu().numpy()
            stats.batches += 1
            stats.padded_tokens += padded * len(indices)
            stats.batch_sizes.append(len(indices))
        stats.seconds = time.perf_counter() - t0
        return logits, stats

    def check(self) -> None:
        """Touch the device with a tiny op; raises when the device or model is unusable."""
        if self.model is None:
            raise RuntimeError("model is not loaded")
        x = torch.ones(2, device=self.device)
        if float((x + x).sum().item()) != 4.0:
            raise RuntimeError(f"device {self.device} returned a wrong result")
