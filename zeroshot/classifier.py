"""`ZeroShotClassifier`: the whole engine in one process, with the pipeline's call contract."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from zeroshot.assemble import ClassificationResult
from zeroshot.config import DEFAULT_MODEL, DEFAULT_TEMPLATE, BatchingConfig, Limits
from zeroshot.devices import dtype_name
from zeroshot.encode import EncodedRequest
from zeroshot.errors import ZeroShotError
from zeroshot.frontend import Frontend
from zeroshot.requests import ClassificationRequest
from zeroshot.score import Scorer, ScoreStats


class ZeroShotClassifier:
    """Zero-shot classification with an NLI model: encode -> score -> assemble."""

    def __init__(self, frontend: Frontend, scorer: Scorer, model_name: str, revision: str | None):
        self.frontend = frontend
        self.scorer = scorer
        self.model_name = model_name
        self.revision = revision

    @classmethod
    def from_pretrained(
        cls,
        model: str = DEFAULT_MODEL,
        revision: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        *,
        batching: BatchingConfig | None = None,
        limits: Limits | None = None,
    ) -> ZeroShotClassifier:
        frontend = Frontend.from_pretrained(model, revision, limits)
        scorer = Scorer.from_pretrained(model, revision, device, dtype, batching)
        return cls(frontend, scorer, model, revision)

    @property
    def device(self) -> str:
        return str(self.scorer.device)

    @property
    def dtype(self) -> str:
        return dtype_name(self.scorer.dtype)

    def __call__(
        self,
        sequences: str | Sequence[str],
        candidate_labels: str | Sequence[str],
        hypothesis_template: str = DEFAULT_TEMPLATE,
        multi_label: bool = False,
    ) -> ClassificationResult | list[ClassificationResult]:
        """Same arguments and result as `pipeline("zero-shot-classification")(...)`."""
        request = self.frontend.request(
            sequences, candidate_labels, hypothesis_template, multi_label
        )
        (results,) = self.classify_batch([request], raise_errors=True)
        return results[0] if isinstance(sequences, str) else results

    def classify_batch(
        self,
        requests: Sequence[ClassificationRequest],
        *,
        raise_errors: bool = False,
    ) -> list[list[ClassificationResult] | ZeroShotError]:
        """Score the pairs of many requests (each with its own labels, template and multi-label
        flag) together, in shared forward passes. A request that fails to encode yields its
        error in place (or raises it with `raise_errors`); the others are unaffected."""
        encoded = self.frontend.encode_many(requests)
        if raise_errors:
            for item in encoded:
                if isinstance(item, ZeroShotError):
                    raise item
        logits_per_request, _ = self.score_encoded(
            [e for e in encoded if isinstance(e, EncodedRequest)]
        )
        logits_iter = iter(logits_per_request)
        return [
            e if isinstance(e, ZeroShotError) else self.frontend.assemble(e, next(logits_iter))
            for e in encoded
        ]

    def score_encoded(
        self, encoded: Sequence[EncodedRequest]
    ) -> tuple[list[np.ndarray], ScoreStats]:
        """Logits of every request's pairs from one shared `score` call."""
        pairs = [p for e in encoded for p in e.pairs]
        logits, stats = self.scorer.score_with_stats(pairs)
        bounds = np.cumsum([0] + [len(e.pairs) for e in encoded])
        return [logits[a:b] for a, b in zip(bounds[:-1], bounds[1:])], stats
