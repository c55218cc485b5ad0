"""Shared fixtures: random-weight BART models built once per test session, no network."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """Tiny BART sequence classifier, MNLI labels (entailment id 2)."""
    from zeroshot.fixtures import make_test_model

    return str(make_test_model(tmp_path_factory.mktemp("models") / "tiny", "tiny"))


@pytest.fixture(scope="session")
def tiny_model_entail0(tmp_path_factory) -> str:
    """Tiny model with upper-case label names and entailment at id 0."""
    from zeroshot.fixtures import make_test_model

    labels = ("ENTAILMENT", "NEUTRAL", "CONTRADICTION")
    return str(make_test_model(tmp_path_factory.mktemp("models") / "tiny_e0", "tiny", labels))


@pytest.fixture(scope="session")
def reference_pipeline(tiny_model):
    """The transformers zero-shot pipeline on the tiny model: the reference answers."""
    from transformers import pipeline

    return pipeline("zero-shot-classification", model=tiny_model, device=-1)
