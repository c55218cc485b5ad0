"""Zero-shot text classification with an NLI model: encode -> score -> assemble.

This package never imports Ray: the Serve app (`serve`) and the Ray Data job (`pipelines`)
build on it.
"""

from zeroshot.assemble import ClassificationResult, NliLabels
from zeroshot.classifier import ZeroShotClassifier
from zeroshot.config import (
    DEFAULT_MODEL,
    DEFAULT_TEMPLATE,
    BatchingConfig,
    EngineConfig,
    Limits,
    ModelConfig,
)
from zeroshot.encode import EncodedRequest, PairEncoder
from zeroshot.errors import ErrorType, ZeroShotError
from zeroshot.frontend import Frontend
from zeroshot.requests import ClassificationRequest
from zeroshot.score import Scorer, ScoreStats

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_TEMPLATE",
    "BatchingConfig",
    "ClassificationRequest",
    "ClassificationResult",
    "EncodedRequest",
    "EngineConfig",
    "ErrorType",
    "Frontend",
    "Limits",
    "ModelConfig",
    "NliLabels",
    "PairEncoder",
    "Scorer",
    "ScoreStats",
    "ZeroShotClassifier",
    "ZeroShotError",
]
