"""Zero-shot text classification with an NLI model: encode -> score -> assemble.

This package never imports Ray: the Serve app (`serve`) and the Ray Data job (`pipelines`)
build on it. Names load lazily, so a CPU-only process that needs only `encode`/`assemble`
(the HTTP ingress, a Ray Data task) never imports torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ClassificationResult": "zeroshot.assemble",
    "NliLabels": "zeroshot.assemble",
    "ZeroShotClassifier": "zeroshot.classifier",
    "DEFAULT_MODEL": "zeroshot.config",
    "DEFAULT_TEMPLATE": "zeroshot.config",
    "BatchingConfig": "zeroshot.config",
    "Limits": "zeroshot.config",
    "ModelConfig": "zeroshot.config",
    "EncodedRequest": "zeroshot.encode",
    "PairEncoder": "zeroshot.encode",
    "ErrorType": "zeroshot.errors",
    "Pairs": "zeroshot.pairs",
    "ZeroShotError": "zeroshot.errors",
    "Frontend": "zeroshot.frontend",
    "ClassificationRequest": "zeroshot.requests",
    "Scorer": "zeroshot.score",
    "ScoreStats": "zeroshot.score",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'zeroshot' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
