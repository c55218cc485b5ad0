"""Shared fixtures (random-weight models built once per test session, no network) and the run's
order: modules without Ray first, so the engine's verdict shows within seconds."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config, items):
    """Modules with no Ray test run first, then the Ray modules, each module kept whole (a
    module-scoped fixture, such as a module's own Ray, is set up once) and in its own order."""
    ray_modules = {item.module.__name__ for item in items if item.get_closest_marker("ray")}
    first_index: dict[str, int] = {}
    for i, item in enumerate(items):
        first_index.setdefault(item.module.__name__, i)
    items.sort(
        key=lambda item: (
            item.module.__name__ in ray_modules,
            first_index[item.module.__name__],
        )
    )


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
def second_model(tmp_path_factory) -> str:
    """A second model to serve beside the tiny BART one: another family (a BERT
    cross-encoder, which reads token type ids), upper-case label names, entailment at id 0."""
    from zeroshot.fixtures import make_test_model

    labels = ("ENTAILMENT", "NEUTRAL", "CONTRADICTION")
    directory = tmp_path_factory.mktemp("models") / "second"
    return str(make_test_model(directory, "tiny", labels, seed=5, arch="bert"))


@pytest.fixture(scope="session")
def reference_pipeline(tiny_model):
    """The transformers zero-shot pipeline on the tiny model: the reference answers."""
    from transformers import pipeline

    return pipeline("zero-shot-classification", model=tiny_model, device=-1)
