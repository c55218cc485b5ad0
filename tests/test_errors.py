"""Every bad input raises its typed error with a readable message; one table gives each error
type its HTTP status."""

from __future__ import annotations

import json

import pytest

from serve.errors import STATUS, error_response
from zeroshot import ClassificationRequest, Limits, ZeroShotClassifier
from zeroshot.errors import (
    DeviceOutOfMemoryError,
    DuplicateLabelsError,
    EmptyLabelError,
    ErrorType,
    HypothesisTooLongError,
    InvalidInputError,
    InvalidTemplateError,
    InvalidTextError,
    ModelLoadError,
    NoLabelsError,
    NoTextError,
    OverloadedError,
    TextTooLongError,
    TooManyLabelsError,
    TooManySequencesError,
    ZeroShotError,
    from_exception,
)


@pytest.fixture(scope="module")
def clf(tiny_model) -> ZeroShotClassifier:
    return ZeroShotClassifier.from_pretrained(
        tiny_model, dtype="float32", limits=Limits(max_labels=5, max_sequences=3, max_chars=50)
    )


@pytest.mark.parametrize(
    ("sequences", "labels", "template", "error"),
    [
        ("text", [], "This is {}.", NoLabelsError),
        ("text", "", "This is {}.", NoLabelsError),
        ("text", " , ,", "This is {}.", NoLabelsError),
        ("text", None, "This is {}.", NoLabelsError),
        ("text", ["a", 3], "This is {}.", NoLabelsError),
        ("text", ["a", ""], "This is {}.", EmptyLabelError),
        ("text", ["a", " \t"], "This is {}.", EmptyLabelError),
        ("text", "a,a", "This is {}.", DuplicateLabelsError),
        ("text", " a , b,a", "This is {}.", DuplicateLabelsError),
        ("text", ["a", "a"], "This is {}.", DuplicateLabelsError),
        ("", ["a"], "This is {}.", NoTextError),
        ([], ["a"], "This is {}.", NoTextError),
        (["ok", ""], ["a"], "This is {}.", NoTextError),
        (None, ["a"], "This is {}.", InvalidTextError),
        ([None], ["a"], "This is {}.", InvalidTextError),
        (["ok", 12], ["a"], "This is {}.", InvalidTextError),
        ({"a": 1}, ["a"], "This is {}.", InvalidTextError),
        ("text", ["a"], "no placeholder", InvalidTemplateError),
        ("text", ["a"], "{label}", InvalidTemplateError),
        ("text", ["a"], "{0} {1}", InvalidTemplateError),
        ("text", ["a"], "unbalanced {", InvalidTemplateError),
        ("text", list("abcdef"), "This is {}.", TooManyLabelsError),
        (["a", "b", "c", "d"], ["a"], "This is {}.", TooManySequencesError),
        ("x" * 51, ["a"], "This is {}.", TextTooLongError),
        ("text", ["word " * 200], "This is {}.", HypothesisTooLongError),
    ],
)
def test_bad_input_raises_typed_error(clf, sequences, labels, template, error):
    with pytest.raises(error) as info:
        clf(sequences, labels, template)
    exc = info.value
    assert isinstance(exc, InvalidInputError) and isinstance(exc, ValueError)
    assert exc.message and 400 <= STATUS[exc.type] < 500 and exc.retry_after_s is None
    assert exc.to_dict() == {"type": exc.type.value, "message": exc.message}


def test_error_types_map_to_documented_codes():
    assert STATUS[ErrorType.INVALID_JSON] == 400
    assert STATUS[ErrorType.NO_LABELS] == 422
    assert STATUS[ErrorType.INVALID_LABELS] == 422  # empty or duplicate labels
    assert STATUS[ErrorType.TOO_MANY_LABELS] == 413
    assert STATUS[ErrorType.BODY_TOO_LARGE] == 413
    assert STATUS[ErrorType.UNAUTHORIZED] == 401
    assert STATUS[ErrorType.METHOD_NOT_ALLOWED] == 405
    assert STATUS[ErrorType.OVERLOADED] == 503 and STATUS[ErrorType.TOO_MANY_REQUESTS] == 429
    assert set(STATUS) == set(ErrorType)  # one table, every type
    # a retry helps exactly for the 429/503 kinds, and the answer says when
    for t in ErrorType:
        assert (t.retry_after_s is not None) == (STATUS[t] in (429, 503)), t


def test_every_failure_becomes_one_typed_answer():
    oom = type("OutOfMemoryError", (RuntimeError,), {})("CUDA out of memory")
    for exc, status, type_, retry in [
        (TooManyLabelsError("too many"), 413, "too_many_labels", None),
        (oom, 503, "device_out_of_memory", "1"),
        (KeyError("boom"), 500, "internal_error", None),
        (OverloadedError("busy", retry_after_s=2.5), 503, "overloaded", "3"),
    ]:
        response = error_response(exc)
        assert response.status_code == status
        assert json.loads(response.body)["error"]["type"] == type_
        assert response.headers.get("retry-after") == retry
    assert isinstance(from_exception(oom), DeviceOutOfMemoryError)


def test_errors_survive_pickling():
    import pickle

    exc = pickle.loads(pickle.dumps(TooManyLabelsError("too many")))
    assert isinstance(exc, TooManyLabelsError) and exc.message == "too many"
    busy = pickle.loads(pickle.dumps(OverloadedError("busy", retry_after_s=7)))
    assert isinstance(busy, OverloadedError) and busy.retry_after_s == 7


def test_label_messages_name_the_label(clf):
    with pytest.raises(DuplicateLabelsError, match="'sports' is given more than once"):
        clf("text", "sports, politics, sports")
    with pytest.raises(EmptyLabelError, match="candidate label 1 ") as info:
        clf("text", ["sports", ""])
    assert info.value.type is ErrorType.INVALID_LABELS


def test_empty_pieces_of_a_label_string_are_dropped_as_the_pipeline_does(clf):
    assert clf("text", "a,,b, ")["labels"].__len__() == 2


@pytest.mark.parametrize(
    "template", ["It is about {0}.", "{0}, or {0}", "{{literal}} {}", "}}{}{{", "{}"]
)
def test_a_template_with_one_place_for_the_label_is_taken(template):
    # `{}` once or `{0}` any number of times, other braces doubled (zeroshot.requests)
    req = ClassificationRequest.create("t", ["a"], template)
    assert req.hypothesis_template == template


@pytest.mark.parametrize("template", ["{} and {}", "{0.real}", "{0!r}", "{:>9}", "{{}}", "{0}{}"])
def test_a_template_that_formatting_would_break_or_ignore_is_refused(template):
    # "{0.real}" raised AttributeError, a 500, before the rule was a pattern.
    with pytest.raises(InvalidTemplateError, match="must contain"):
        ClassificationRequest.create("t", ["a"], template)


def test_list_labels_are_distinct_as_given():
    # JSON Schema's uniqueItems, which the OpenAPI document states: "a" and "a " are two
    assert ClassificationRequest.create("t", ["a", "a "]).labels == ("a", "a ")


def test_unreachable_hub_names_the_model_and_local_path(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ModelLoadError) as info:
        ZeroShotClassifier.from_pretrained("valhalla/distilbart-mnli-12-1", dtype="float32")
    msg = info.value.message
    assert "valhalla/distilbart-mnli-12-1" in msg and "local" in msg and "--model" in msg
    # the command the installed huggingface_hub ships (not the retired huggingface-cli)
    assert "hf download valhalla/distilbart-mnli-12-1 --local-dir DIR" in msg
    assert "HF_HUB_OFFLINE=1" in msg
    assert isinstance(info.value, ZeroShotError)


def test_a_path_that_is_not_there_is_named_as_such(tmp_path):
    with pytest.raises(ModelLoadError, match="no such directory"):
        ZeroShotClassifier.from_pretrained(str(tmp_path / "typo"), dtype="float32")


def test_local_directory_without_model(tmp_path):
    with pytest.raises(ModelLoadError, match="directory exists"):
        ZeroShotClassifier.from_pretrained(str(tmp_path), dtype="float32")
