"""The engine gives the transformers zero-shot pipeline's answers (float32, 1e-5)."""

from __future__ import annotations

import pytest
from reference import assert_same_result

from zeroshot import ClassificationRequest, ZeroShotClassifier
from zeroshot.errors import InvalidTextError

TEXTS = [
    "I have a problem with my iphone that needs to be resolved asap!!",
    "The football team won the league after a great season.",
    "Stock prices fell as inflation worries hit the market.",
]
LABELS_5 = ["urgent", "not urgent", "phone", "tablet", "computer"]
LABELS_20 = [
    "politics", "sports", "technology", "health", "business", "music", "film", "travel",
    "weather", "science", "education", "food", "family", "security", "economy", "law",
    "energy", "culture", "history", "art",
]  # fmt: skip


@pytest.fixture(scope="module")
def clf(tiny_model) -> ZeroShotClassifier:
    return ZeroShotClassifier.from_pretrained(tiny_model, dtype="float32")


def compare(clf, pipe, sequences, labels, **kw):
    expected = pipe(sequences, candidate_labels=labels, **kw)
    actual = clf(sequences, labels, **kw)
    if isinstance(sequences, str):
        assert isinstance(actual, dict)
        expected, actual = [expected], [actual]
    assert isinstance(actual, list) and len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert_same_result(a, e)
    return actual


@pytest.mark.parametrize("labels", [["sports"], ["sports", "politics"], LABELS_20])
@pytest.mark.parametrize("multi_label", [False, True])
def test_one_text_label_counts(clf, reference_pipeline, labels, multi_label):
    compare(clf, reference_pipeline, TEXTS[0], labels, multi_label=multi_label)


@pytest.mark.parametrize("multi_label", [False, True])
def test_many_texts(clf, reference_pipeline, multi_label):
    compare(clf, reference_pipeline, TEXTS, LABELS_5, multi_label=multi_label)


def test_labels_as_comma_string(clf, reference_pipeline):
    out = compare(clf, reference_pipeline, TEXTS[1], " sports, politics ,,technology ")
    assert sorted(out[0]["labels"]) == ["politics", "sports", "technology"]


def test_custom_template(clf, reference_pipeline):
    compare(
        clf, reference_pipeline, TEXTS, LABELS_5, hypothesis_template="The topic of this text is {}"
    )


def test_truncated_long_text(clf, reference_pipeline):
    long_text = "The market report said growth was strong. " * 80
    n_tokens = len(clf.frontend.tokenizer(long_text)["input_ids"])
    assert n_tokens > clf.frontend.max_length  # really truncated
    compare(clf, reference_pipeline, [long_text, TEXTS[0]], LABELS_5)
    compare(clf, reference_pipeline, long_text, LABELS_5, multi_label=True)


def test_unicode_and_emoji(clf, reference_pipeline):
    texts = ["Le café à Zürich 🙂 est très bon 🎉", "東京の天気は晴れ 🚀", "Москва — €5 ß"]
    compare(clf, reference_pipeline, texts, ["travel", "food", "weather", "café 🙂"])


def test_lone_surrogate_is_refused_with_its_position(clf):
    # The pipeline's tokenizer raises a bare TypeError here; ours names the problem.
    with pytest.raises(InvalidTextError, match=r"U\+D800 at character 4"):
        clf("café\ud800", ["a"])
    assert clf("café \U0001f642", ["a"])["labels"] == ["a"]  # a real pair is a character


def test_scores_are_not_uniform(clf):
    # A near-uniform random model would prove nothing about label order.
    out = clf(TEXTS[0], LABELS_5)
    assert out["scores"][0] - out["scores"][-1] > 0.05
    assert abs(sum(out["scores"]) - 1.0) < 1e-5


def test_entailment_at_id_zero_with_uppercase_names(tiny_model_entail0):
    from transformers import pipeline

    pipe = pipeline("zero-shot-classification", model=tiny_model_entail0, device=-1)
    clf = ZeroShotClassifier.from_pretrained(tiny_model_entail0, dtype="float32")
    assert clf.frontend.nli.entailment_id == 0
    assert clf.frontend.nli.contradiction_id == -1
    for multi_label in (False, True):
        compare(clf, pipe, TEXTS, LABELS_5, multi_label=multi_label)
    compare(clf, pipe, TEXTS[0], ["sports"])


def test_mixed_requests_match_separate_calls(clf):
    requests = [
        ClassificationRequest.create(TEXTS[0], LABELS_5),
        ClassificationRequest.create(TEXTS[1:], ["sports", "politics"], multi_label=True),
        ClassificationRequest.create(TEXTS[2], LABELS_20, "Topic: {}"),
        ClassificationRequest.create(["short", "x " * 300], "a,b,c"),
    ]
    together = clf.classify_batch(requests, raise_errors=True)
    for req, got in zip(requests, together):
        alone = clf(list(req.sequences), list(req.labels), req.hypothesis_template, req.multi_label)
        for a, e in zip(got, alone):
            assert_same_result(a, e, tol=1e-5)


def test_batched_scoring_matches_one_by_one(tiny_model):
    # A tight token budget forces many small batches with different padded lengths.
    from zeroshot import BatchingConfig

    tight = ZeroShotClassifier.from_pretrained(
        tiny_model, dtype="float32", batching=BatchingConfig(max_batch_tokens=64)
    )
    loose = ZeroShotClassifier.from_pretrained(tiny_model, dtype="float32")
    texts = TEXTS + ["word " * n for n in (1, 7, 33, 90)]
    for a, e in zip(tight(texts, LABELS_5), loose(texts, LABELS_5)):
        assert_same_result(a, e, tol=1e-5)
