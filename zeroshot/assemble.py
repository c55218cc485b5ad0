"""Stage 3, `assemble`: NLI logits to label scores exactly as the transformers pipeline does."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypedDict

import numpy as np

from zeroshot.requests import ClassificationRequest

log = logging.getLogger(__name__)


class ClassificationResult(TypedDict):
    sequence: str
    labels: list[str]
    scores: list[float]


@dataclass(frozen=True)
class NliLabels:
    """Which logit means entailment and which contradiction, from the model config."""

    entailment_id: int
    contradiction_id: int
    id2label: dict[int, str]

    @classmethod
    def from_label2id(cls, label2id: Mapping[str, int]) -> NliLabels:
        # Pipeline rule: the first label whose name starts with "entail" (any case), else -1;
        # contradiction is 0 unless entailment is 0, then the last logit.
        entailment = next(
            (int(i) for name, i in label2id.items() if name.lower().startswith("entail")), -1
        )
        if entailment == -1:
            log.warning(
                "no label starting with 'entail' in label2id %s; using the last logit as "
                "entailment, as the transformers pipeline does",
                dict(label2id),
            )
        contradiction = -1 if entailment == 0 else 0
        return cls(entailment, contradiction, {int(i): n for n, i in label2id.items()})

    @classmethod
    def from_config(cls, config) -> NliLabels:
        return cls.from_label2id(config.label2id)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def rank_labels(
    logits: np.ndarray, n_labels: int, multi_label: bool, nli: NliLabels
) -> tuple[np.ndarray, np.ndarray]:
    """`assemble`'s scores for many sequences at once, as arrays: logits of `n` sequences x
    `n_labels` pairs (encode order) give (order `[n, n_labels]`: label indices best first,
    scores `[n, n_labels]` float32 in that order). Same arithmetic and the same tie order as
    `assemble` (numpy sorts each row of a 2-D array as it sorts a 1-D one)."""
    logits = np.asarray(logits, dtype=np.float32)
    reshaped = logits.reshape(-1, n_labels, logits.shape[-1])
    if multi_label or n_labels == 1:
        scores = _softmax(reshaped[..., [nli.contradiction_id, nli.entailment_id]])[..., 1]
    else:
        scores = _softmax(reshaped[..., nli.entailment_id])
    order = np.argsort(scores, axis=-1)[:, ::-1]
    return order, np.take_along_axis(scores, order, axis=-1)


def assemble(
    req: ClassificationRequest, logits: np.ndarray, nli: NliLabels
) -> list[ClassificationResult]:
    """Results for each sequence of one request, from its pairs' logits in encode order."""
    n_labels = len(req.labels)
    reshaped = np.asarray(logits, dtype=np.float32).reshape(len(req.sequences), n_labels, -1)
    if req.multi_label or n_labels == 1:
        scores = _softmax(reshaped[..., [nli.contradiction_id, nli.entailment_id]])[..., 1]
    else:
        scores = _softmax(reshaped[..., nli.entailment_id])
    results = []
    for text, row in zip(req.sequences, scores):
        top = list(reversed(row.argsort()))
        results.append(
            ClassificationResult(
                sequence=text,
                labels=[req.labels[i] for i in top],
                scores=row[top].tolist(),
            )
        )
    return results
