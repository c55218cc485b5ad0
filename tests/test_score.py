"""`score`: token-budgeted batches, device and dtype choice, logits in input order."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zeroshot import BatchingConfig, Scorer
from zeroshot.devices import cpu_has_native_bf16, resolve_device, resolve_dtype
from zeroshot.score import plan_batches


def test_plan_batches_respects_the_padded_token_budget():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 300, size=500)
    cfg = BatchingConfig(max_batch_tokens=2048, max_batch_pairs=64, pad_to_multiple_of=8)
    plan = plan_batches(lengths, cfg)
    seen = np.concatenate([idx for idx, _ in plan])
    assert sorted(seen.tolist()) == list(range(500))  # every pair exactly once
    for idx, padded in plan:
        assert padded % 8 == 0 and padded >= lengths[idx].max()
        assert padded - lengths[idx].max() < 8
        assert len(idx) <= 64
        assert padded * len(idx) <= 2048
        assert (-(-lengths[idx] // 8) * 8 >= 0.75 * padded).all()  # min_fill
    firsts = [lengths[idx].max() for idx, _ in plan]
    assert firsts == sorted(firsts, reverse=True)  # longest first


def test_one_long_pair_does_not_pad_a_batch_of_short_ones():
    lengths = np.array([300] + [20] * 50)
    plan = plan_batches(lengths, BatchingConfig(max_batch_tokens=100_000))
    assert [(len(idx), padded) for idx, padded in plan] == [(1, 304), (50, 24)]
    packed = plan_batches(lengths, BatchingConfig(max_batch_tokens=100_000, min_fill=0.0))
    assert [(len(idx), padded) for idx, padded in packed] == [(51, 304)]


def test_a_pair_longer_than_the_budget_runs_alone():
    plan = plan_batches(np.array([10, 1000, 10]), BatchingConfig(max_batch_tokens=100))
    assert [len(idx) for idx, _ in plan] == [1, 2]


def test_scores_keep_input_order_across_batches(tiny_model):
    scorer = Scorer.from_pretrained(
        tiny_model, dtype="float32", batching=BatchingConfig(max_batch_tokens=64)
    )
    rng = np.random.default_rng(1)
    pairs = [
        np.concatenate(([0], rng.integers(5, 500, n), [2, 2, 7, 8, 2])).astype(np.int32)
        for n in (3, 40, 1, 17, 9, 60, 2)
    ]
    logits, stats = scorer.score_with_stats(pairs)
    one_by_one = np.concatenate([scorer.score([p]) for p in pairs])
    np.testing.assert_allclose(logits, one_by_one, atol=1e-5)
    assert stats.batches > 1 and stats.pairs == len(pairs)
    assert stats.tokens == sum(len(p) for p in pairs) <= stats.padded_tokens
    assert 0.0 <= stats.padding_ratio < 1.0
    assert logits.dtype == np.float32


def test_empty_input(tiny_model):
    scorer = Scorer.from_pretrained(tiny_model, dtype="float32")
    assert scorer.score([]).shape == (0, 3)
    scorer.check()


def test_device_and_dtype_choice():
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
    assert resolve_dtype("float32", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    expected = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    assert resolve_dtype("auto", torch.device("cpu")) == expected
    with pytest.raises(ValueError, match="dtype"):
        resolve_dtype("int8", torch.device("cpu"))


def test_bfloat16_scores_are_close_to_float32(tiny_model):
    from zeroshot import ZeroShotClassifier

    texts = ["The football team won the league.", "Prices fell on the stock market today."]
    labels = ["sports", "business", "politics"]
    exact = ZeroShotClassifier.from_pretrained(tiny_model, dtype="float32")(texts, labels)
    fast = ZeroShotClassifier.from_pretrained(tiny_model, dtype="bfloat16")
    assert fast.dtype == "bfloat16"
    for e, f in zip(exact, fast(texts, labels)):
        fs = dict(zip(f["labels"], f["scores"]))
        assert max(abs(s - fs[label]) for label, s in zip(e["labels"], e["scores"])) < 0.05
