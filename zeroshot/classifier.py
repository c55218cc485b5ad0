"""`ZeroShotClassifier`: the whole engine in one process, with the pipeline's call contract."""

from __future__ import annotations

from collections.abc import Sequence

from zeroshot.assemble import ClassificationResult
from zeroshot.config import DEFAULT_MODEL, DEFAULT_TEMPLATE, BatchingConfig, Limits, ModelConfig
from zeroshot.encode import EncodedRequest
from zeroshot.errors import ZeroShotError
from zeroshot.frontend import Frontend
from zeroshot.requests import ClassificationRequest
from zeroshot.score import Scorer


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
        cfg = ModelConfig(model=model, revision=revision, device=device, dtype=dtype)
        return cls.from_config(cfg, batching=batching, limits=limits)

    @classmethod
    def from_config(
        cls,
        cfg: ModelConfig,
        *,
        batching: BatchingConfig | None = None,
        limits: Limits | None = None,
    ) -> ZeroShotClassifier:
        """From a `ModelConfig` (any backend; device 'auto' is the first GPU CUDA sees)."""
        frontend = Frontend.from_pretrained(cfg.model, cfg.revision, limits)
        return cls(frontend, Scorer.from_config(cfg, batching=batching), cfg.model, cfg.revision)

    @property
    def device(self) -> str:
        return self.scorer.device

    @property
    def dtype(self) -> str:
        return self.scorer.dtype

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
        ok = [e for e in encoded if isinstance(e, EncodedRequest)]
        logits, _ = self.scorer.score_many([e.pairs for e in ok])
        per_request = iter(logits)
        return [
            e
            if isinstance(e, ZeroShotError)
            else self.frontend.assemble(e.request, next(per_request))
            for e in encoded
        ]
