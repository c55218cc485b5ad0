"""`score`: token-budgeted batches, the one device rule, dtype choice, logits in input order,
the null backend."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zeroshot import BatchingConfig, ModelConfig, Scorer
from zeroshot.devices import cpu_has_native_bf16, resolve_device, resolve_dtype
from zeroshot.errors import InvalidInputError
from zeroshot.pairs import Pairs
from zeroshot.score import pad_batch, plan_batches


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
    logits, stats = scorer.score(Pairs.from_list(pairs))
    one_by_one = np.concatenate([scorer.score(Pairs.from_list([p]))[0] for p in pairs])
    np.testing.assert_allclose(logits, one_by_one, atol=1e-5)
    assert stats.batches > 1 and stats.pairs == len(pairs)
    assert stats.tokens == sum(len(p) for p in pairs) <= stats.padded_tokens
    assert 0.0 <= stats.padding_ratio < 1.0
    assert logits.dtype == np.float32


def test_score_many_splits_per_group(tiny_model):
    scorer = Scorer.from_pretrained(tiny_model, dtype="float32")
    pairs = [np.array([0, 5 + n, 2, 2, 9, 2], dtype=np.int32) for n in range(5)]
    groups = [Pairs.from_list(pairs[:2]), Pairs.from_list([]), Pairs.from_list(pairs[2:])]
    per_group, stats = scorer.score_many(groups)
    assert [len(g) for g in per_group] == [2, 0, 3] and stats.pairs == 5
    alone = scorer.score(Pairs.from_list(pairs))[0]
    np.testing.assert_allclose(np.concatenate(per_group), alone, atol=1e-6)


def test_pairs_pad_take_and_check():
    pairs = Pairs.from_list([np.array([0, 7, 2]), np.array([0, 8, 9, 10, 2]), np.array([3])])
    assert pairs.lengths.tolist() == [3, 5, 1] and pairs.num_tokens == 9
    ids, lengths = pad_batch(pairs, np.array([1, 0]), 8, pad_id=1)
    assert ids.tolist() == [[0, 8, 9, 10, 2, 1, 1, 1], [0, 7, 2, 1, 1, 1, 1, 1]]
    assert lengths.tolist() == [5, 3]
    assert [p.tolist() for p in pairs.take(np.array([2, 0])).to_list()] == [[3], [0, 7, 2]]
    pairs.check(vocab_size=11, max_length=5)
    for vocab, length in ((10, 5), (11, 4)):
        with pytest.raises(InvalidInputError):
            pairs.check(vocab_size=vocab, max_length=length)


def test_empty_input(tiny_model):
    scorer = Scorer.from_pretrained(tiny_model, dtype="float32")
    assert scorer.score(Pairs.from_list([]))[0].shape == (0, 3)
    scorer.check()


def test_null_backend_scores_without_weights(tiny_model):
    scorer = Scorer.from_config(ModelConfig(model=tiny_model, backend="null"))
    assert scorer.device == "null" and scorer.batching.max_batch_tokens == 16384
    logits, stats = scorer.score(Pairs.from_list([np.array([0, 5, 2])] * 3))
    assert logits.shape == (3, 3) and not logits.any() and stats.batches == 1


# (configured, Ray's GPU ids or None outside Ray, CUDA_VISIBLE_DEVICES, GPUs CUDA sees) -> device
DEVICE_TABLE = [
    ("auto", None, None, 0, "cpu"),  # in-process, no GPU
    ("auto", None, None, 2, "cuda:0"),  # in-process with GPUs
    ("auto", [], "0,1", 2, "cpu"),  # Ray gave this actor no GPU; the node has some
    ("auto", [3], "3", 1, "cuda:0"),  # Ray narrowed CUDA_VISIBLE_DEVICES to the assigned one
    ("auto", ["3"], "1,3", 2, "cuda:1"),  # several visible: the assigned id's place
    ("auto", ["2"], None, 4, "cuda:2"),  # RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES
    ("auto", [0], "0", 0, "cpu"),  # a node that declares GPUs CUDA cannot drive
    ("auto", ["2"], None, 1, "cpu"),  # NOSET, but CUDA sees fewer GPUs than the id
    ("cpu", [0], "0", 1, "cpu"),  # explicit wins
    ("cuda:1", [], None, 0, "cuda:1"),
]


@pytest.mark.parametrize(("configured", "gpu_ids", "visible", "count", "expected"), DEVICE_TABLE)
def test_one_device_rule(configured, gpu_ids, visible, count, expected):
    got = resolve_device(configured, gpu_ids, visible=visible, cuda_devices=count)
    assert got == torch.device(expected)


def test_dtype_choice():
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
