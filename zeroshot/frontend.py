"""The CPU half of the engine (`encode` + `assemble`): tokenizer and config, never the weights.

The Serve ingress and the Ray Data encode/assemble tasks hold one of these; only the scoring
actors load the model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from zeroshot.assemble import ClassificationResult, NliLabels, assemble
from zeroshot.config import Limits
from zeroshot.encode import EncodedRequest, PairEncoder, uses_token_types
from zeroshot.loading import load_config, load_tokenizer
from zeroshot.requests import ClassificationRequest


class Frontend:
    def __init__(self, tokenizer, config, limits: Limits | None = None):
        self.tokenizer = tokenizer
        self.config = config
        self.limits = limits or Limits()
        self.nli = NliLabels.from_config(config)
        self.encoder = PairEncoder.from_tokenizer(
            tokenizer,
            getattr(config, "max_position_embeddings", None),
            token_types=uses_token_types(tokenizer, config),
        )

    @classmethod
    def from_pretrained(
        cls, model: str, revision: str | None = None, limits: Limits | None = None
    ) -> Frontend:
        return cls(load_tokenizer(model, revision), load_config(model, revision), limits)

    def request(self, sequences, candidate_labels, hypothesis_template, multi_label=False):
        """A validated `ClassificationRequest` under this frontend's limits."""
        return ClassificationRequest.create(
            sequences, candidate_labels, hypothesis_template, multi_label, self.limits
        )

    def encode(self, request: ClassificationRequest) -> EncodedRequest:
        return self.encoder.encode(request)

    def encode_many(self, requests: Sequence[ClassificationRequest]):
        return self.encoder.encode_many(requests)

    def assemble(
        self, request: ClassificationRequest, logits: np.ndarray
    ) -> list[ClassificationResult]:
        return assemble(request, logits, self.nli)

    @property
    def max_length(self) -> int:
        return self.encoder.max_length
