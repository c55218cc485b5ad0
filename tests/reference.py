"""Comparison with the transformers pipeline's answers."""

from __future__ import annotations


def assert_same_result(actual: dict, expected: dict, tol: float = 1e-5) -> None:
    assert actual["sequence"] == expected["sequence"]
    assert actual["labels"] == expected["labels"], (actual, expected)
    assert len(actual["scores"]) == len(expected["scores"])
    for a, e in zip(actual["scores"], expected["scores"]):
        assert abs(a - e) <= tol, (actual, expected)
