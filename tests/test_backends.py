"""TorchBackend: the fast forward in the engine (exact against transformers and the pipeline),
the switch back to transformers' forward, the queued CUDA loop, CUDA graph buckets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from reference import assert_same_result

from zeroshot import ModelConfig, Scorer, ZeroShotClassifier
from zeroshot.backends import TorchBackend, load_backend
from zeroshot.fast_bart import FastBartClassifier, GraphedForward, row_bucket
from zeroshot.pairs import Pairs
from zeroshot.score import pad_batch, plan_batches

TEXTS = [
    "I have a problem with my iphone that needs to be resolved asap!!",
    "The football team won the league after a great season.",
    "Stock prices fell as inflation worries hit the market.",
    "short",
]
LABELS = ["urgent", "not urgent", "phone", "sports", "business"]
CUDA = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="needs a CUDA device: runs where torch.cuda.is_available() (a GPU host; "
    "python -m benchmarks.gpu covers it on a lent one)",
)


def load(path: str, dtype=torch.float32, device="cpu"):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype).to(device).eval()


def random_pairs(n: int, seed: int = 0, vocab: int = 2000) -> Pairs:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        text = rng.integers(5, vocab, int(rng.integers(0, 70)))
        hyp = rng.integers(5, vocab, int(rng.integers(2, 6)))
        out.append(np.concatenate(([0], text, [2, 2], hyp, [2])).astype(np.int32))
    return Pairs.from_list(out)


def backend_logits(backend, pairs: Pairs, max_batch_tokens: int = 256) -> np.ndarray:
    return Scorer(backend, _batching(max_batch_tokens)).score(pairs)[0]


def _batching(max_batch_tokens: int):
    from zeroshot import BatchingConfig

    return BatchingConfig(max_batch_tokens=max_batch_tokens)


def transformers_logits(model, pairs: Pairs) -> np.ndarray:
    """transformers' own forward, one pair at a time (no padding at all)."""
    out = []
    with torch.inference_mode():
        for p in pairs.to_list():
            ids = torch.from_numpy(p.astype(np.int64))[None]
            out.append(model(input_ids=ids, use_cache=False).logits.float().numpy())
    return np.concatenate(out)


@pytest.mark.parametrize("fixture", ["tiny_model", "tiny_model_entail0"])
def test_backend_runs_the_fast_forward_exactly(request, fixture):
    model = load(request.getfixturevalue(fixture))
    backend = TorchBackend(model)
    assert backend.forward == "fast" and backend.queue_depth == 0
    pairs = random_pairs(40)
    expected = transformers_logits(model, pairs)
    got = backend_logits(backend, pairs)
    assert got.dtype == np.float32 and got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-5
    slow = TorchBackend(model, fast_forward=False)
    assert slow.forward == "transformers"
    assert np.abs(backend_logits(slow, pairs) - expected).max() <= 1e-5


def test_models_the_fast_forward_cannot_run_fall_back(tiny_model):
    from transformers import BartForSequenceClassification

    class Custom(BartForSequenceClassification):  # a subclass may change the forward
        pass

    model = Custom.from_pretrained(tiny_model, dtype=torch.float32).eval()
    backend = TorchBackend(model)
    assert backend.forward == "transformers"
    pairs = random_pairs(10, seed=1)
    assert np.abs(backend_logits(backend, pairs) - transformers_logits(model, pairs)).max() <= 1e-5


def test_config_switches_the_forward(tiny_model):
    fast = load_backend(ModelConfig(model=tiny_model, dtype="float32", device="cpu"))
    slow = load_backend(
        ModelConfig(model=tiny_model, dtype="float32", device="cpu", fast_forward=False)
    )
    graphs_on_cpu = load_backend(
        ModelConfig(model=tiny_model, dtype="float32", device="cpu", cuda_graphs=True)
    )
    assert (fast.forward, slow.forward, graphs_on_cpu.forward) == ("fast", "transformers", "fast")


@pytest.fixture(scope="module")
def pipelines(tiny_model, tiny_model_entail0):
    from transformers import pipeline

    return {
        path: pipeline("zero-shot-classification", model=path, device=-1, dtype=torch.float32)
        for path in (tiny_model, tiny_model_entail0)
    }


@pytest.mark.parametrize("fast_forward", [True, False], ids=["fast", "transformers"])
@pytest.mark.parametrize("fixture", ["tiny_model", "tiny_model_entail0"])
@pytest.mark.parametrize("multi_label", [False, True])
def test_engine_matches_the_pipeline(request, pipelines, fixture, fast_forward, multi_label):
    """The whole engine (encode, length-sorted token-budget batches, the backend, assemble)
    against the transformers pipeline, float32, 1e-5; with a truncated text and a tight budget
    so the batches have different padded lengths."""
    from zeroshot import BatchingConfig

    path = request.getfixturevalue(fixture)
    cfg = ModelConfig(model=path, dtype="float32", device="cpu", fast_forward=fast_forward)
    clf = ZeroShotClassifier.from_config(cfg, batching=BatchingConfig(max_batch_tokens=96))
    assert clf.scorer.backend.forward == ("fast" if fast_forward else "transformers")
    long_text = "The market report said growth was strong. " * 80
    assert len(clf.frontend.tokenizer(long_text)["input_ids"]) > clf.frontend.max_length
    texts = [*TEXTS, long_text]
    expected = pipelines[path](texts, candidate_labels=LABELS, multi_label=multi_label)
    got = clf(texts, LABELS, multi_label=multi_label)
    for a, e in zip(got, expected):
        assert_same_result(a, e, tol=1e-5)


class Recording:
    """A real backend whose three steps are logged, with the queue depth CUDA would have."""

    def __init__(self, backend, depth: int):
        self.inner = backend
        self.queue_depth = depth
        self.log: list[str] = []
        for name in ("config", "num_labels", "device", "device_type", "dtype"):
            setattr(self, name, getattr(backend, name))
        self.n = {"pre": 0, "core": 0, "post": 0}

    def _step(self, name, fn, arg):
        self.log.append(f"{name}{self.n[name]}")
        self.n[name] += 1
        return fn(arg) if name != "pre" else fn(*arg)

    def encode_pre(self, ids, lengths, segments=None):
        return self._step("pre", self.inner.encode_pre, (ids, lengths, segments))

    def encode_core(self, inputs):
        return self._step("core", self.inner.encode_core, inputs)

    def encode_post(self, outputs):
        return self._step("post", self.inner.encode_post, outputs)


def test_scorer_queues_the_next_batch_before_reading_one(tiny_model):
    backend = TorchBackend(load(tiny_model))
    pairs = random_pairs(30, seed=2)
    rec0, rec1 = Recording(backend, 0), Recording(backend, 1)
    plain = backend_logits(rec0, pairs, 128)
    queued = backend_logits(rec1, pairs, 128)
    n = rec1.n["core"]
    assert n >= 3
    assert rec0.log == [f"{s}{i}" for i in range(n) for s in ("pre", "core", "post")]
    expected = ["pre0", "core0"]
    for i in range(1, n):
        expected += [f"pre{i}", f"core{i}", f"post{i - 1}"]
    assert rec1.log == [*expected, f"post{n - 1}"]
    np.testing.assert_array_equal(plain, queued)  # same batches, same order of results


def test_row_buckets():
    buckets = [row_bucket(r) for r in range(1, 2049)]
    assert buckets[:15] == list(range(1, 16))  # small batches are not padded
    assert all(b >= r and (b - r) * 8 < r for r, b in zip(range(1, 2049), buckets))
    assert buckets == sorted(buckets)
    assert len(set(buckets)) == 15 + 8 * 7 + 1  # 8 per doubling from 16 to 2047, then 2048
    assert {row_bucket(256), row_bucket(1024)} == {256, 1024}  # full batches are exact
    with pytest.raises(ValueError):
        row_bucket(0)


def test_graph_row_padding_keeps_every_rows_logits(tiny_model):
    """What a CUDA graph replays: the batch padded to its row bucket with one-token dummy
    rows. Run eagerly (capture=False) the real rows' logits must not change."""
    model = load(tiny_model)
    fast = FastBartClassifier(model, unpad=False)
    graphed = GraphedForward(fast.forward_lengths, capture=False)
    pairs = random_pairs(37, seed=3)
    padded = -(-int(pairs.lengths.max()) // 8) * 8
    ids, lengths = pad_batch(pairs, np.arange(len(pairs)), padded, pad_id=1)
    assert row_bucket(len(pairs)) == 40
    ids_t, lengths_t = torch.from_numpy(ids), torch.from_numpy(lengths)
    with torch.inference_mode():
        padded = graphed(ids_t, lengths_t)
        plain = fast.forward_lengths(ids_t, lengths_t)
    assert padded.shape == plain.shape == (37, 3)
    assert (padded - plain).abs().max().item() <= 1e-6


# ---- CUDA only: skipped on the CPU-only machines, run on a GPU host (see cluster/README.md).


@CUDA
@pytest.mark.parametrize("cuda_graphs", [False, True], ids=["eager", "graphs"])
def test_cuda_backend_is_exact_in_float32(tiny_model, cuda_graphs):
    model = load(tiny_model, device="cuda")
    backend = TorchBackend(model, cuda_graphs=cuda_graphs)
    assert backend.queue_depth == 1
    assert backend.forward == ("fast+cuda_graphs" if cuda_graphs else "fast")
    pairs = random_pairs(300, seed=4)
    expected = transformers_logits(load(tiny_model), pairs)  # on the CPU, one pair at a time
    for _ in range(2):  # the second pass replays the captured graphs
        got = backend_logits(backend, pairs, 512)
        assert np.abs(got - expected).max() <= 1e-4
    if cuda_graphs:
        plan = plan_batches(pairs.lengths, _batching(512))
        shapes = {(row_bucket(len(i)), t) for i, t in plan}
        assert set(backend._graphs.graphs) == shapes


@CUDA
def test_cuda_engine_bfloat16_is_close(tiny_model):
    exact = ZeroShotClassifier.from_pretrained(tiny_model, device="cpu", dtype="float32")
    fast = ZeroShotClassifier.from_config(
        ModelConfig(model=tiny_model, device="cuda", dtype="bfloat16", cuda_graphs=True)
    )
    for e, f in zip(exact(TEXTS, LABELS), fast(TEXTS, LABELS)):
        fs = dict(zip(f["labels"], f["scores"]))
        assert max(abs(s - fs[label]) for label, s in zip(e["labels"], e["scores"])) < 0.05
