"""Comparison with the transformers pipeline's answers."""

from __future__ import annotations


def assert_same_result(actual: dict, expected: dict, tol: float = 1e-5) -> None:
    """Same sequence, same score per label within `tol`, same order, except that labels whose
    scores lie within `tol` of each other may come in either order (float rounding decides
    such ties)."""
    assert actual["sequence"] == expected["sequence"]
    assert len(actual["scores"]) == len(expected["scores"])
    assert sorted(actual["labels"]) == sorted(expected["labels"]), (actual, expected)
    want = dict(zip(expected["labels"], expected["scores"]))
    for label, score in zip(actual["labels"], actual["scores"]):
        assert abs(score - want[label]) <= tol, (label, actual, expected)
    for i, (a, e) in enumerate(zip(actual["labels"], expected["labels"])):
        assert a == e or abs(want[a] - want[e]) <= tol, (i, actual, expected)
