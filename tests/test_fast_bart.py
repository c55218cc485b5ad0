"""FastBartClassifier against transformers' own BartForSequenceClassification forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zeroshot.fast_bart import FastBartClassifier, last_token_index, supports

# Both encoder paths: padded (the GPU default, static shapes) and unpadded (the CPU default).
UNPAD = [pytest.param(False, id="padded"), pytest.param(True, id="unpadded")]


def load(path: str, dtype: torch.dtype = torch.float32):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype).eval()


def perturb(model, seed: int = 0):
    """BART's init leaves every bias at 0 and every layer-norm weight at 1, so a forward that
    dropped one would still match; random ones make each of them count."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:  # biases, layer-norm weights and biases
                noise = torch.randn(p.shape, generator=g) * 0.1
                p.add_(noise.to(p.dtype))
    return model


@pytest.fixture(scope="module")
def models(tiny_model, tiny_model_entail0):
    """(fixture, dtype) -> loaded model, each loaded once for this module. 'noisy' is the mnli
    fixture with random biases and layer-norm parameters."""
    cache: dict = {}

    def get(which: str, dtype: torch.dtype = torch.float32):
        path = {"mnli": tiny_model, "noisy": tiny_model, "entail0": tiny_model_entail0}[which]
        if (which, dtype) not in cache:
            model = load(path, dtype)
            cache[which, dtype] = perturb(model) if which == "noisy" else model
        return cache[which, dtype]

    return get


def pair(rng: np.random.Generator, text_len: int, hyp_len: int = 4, vocab: int = 2000):
    """`<s> text </s></s> hypothesis </s>` with random ordinary ids (never 0..4)."""
    text = rng.integers(5, vocab, text_len)
    return np.concatenate(([0], text, [2, 2], rng.integers(5, vocab, hyp_len), [2]))


def batch(pairs, multiple: int = 8, pad_id: int = 1):
    """Right-padded ids and mask, as zeroshot.score builds them, and `last` from the lengths."""
    lengths = np.array([len(p) for p in pairs])
    t = -(-int(lengths.max()) // multiple) * multiple
    ids = np.full((len(pairs), t), pad_id, dtype=np.int64)
    for row, p in enumerate(pairs):
        ids[row, : len(p)] = p
    mask = (np.arange(t) < lengths[:, None]).astype(np.int64)
    return torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(lengths - 1)


def reference(model, ids, mask):
    with torch.inference_mode():
        return model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()


def fast_logits(model, ids, mask, last, unpad: bool):
    with torch.inference_mode():
        return FastBartClassifier(model, unpad=unpad)(ids, mask, last)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


MIXED = (3, 40, 1, 17, 9, 60, 2, 25)


@pytest.mark.parametrize("unpad", UNPAD)
@pytest.mark.parametrize("which", ["mnli", "entail0", "noisy"])
def test_float32_mixed_lengths_match_transformers(models, which, unpad):
    model = models(which)
    rng = np.random.default_rng(0)
    ids, mask, last = batch([pair(rng, n, hyp_len=3 + n % 4) for n in MIXED])
    assert mask[:, -1].eq(0).any()  # some rows are padded
    ref = reference(model, ids, mask)
    out = fast_logits(model, ids, mask, last, unpad)
    assert out.dtype == torch.float32 and out.shape == (len(MIXED), model.config.num_labels)
    assert max_diff(out, ref) <= 1e-5
    assert (out.argmax(1) == ref.argmax(1)).all()


@pytest.mark.parametrize("unpad", UNPAD)
def test_single_rows_match_transformers(models, unpad):
    model = models("mnli")
    rng = np.random.default_rng(1)
    for n, multiple in ((0, 1), (5, 1), (30, 1), (11, 8)):  # unpadded and padded single rows
        ids, mask, last = batch([pair(rng, n)], multiple)
        ref = reference(model, ids, mask)
        assert max_diff(fast_logits(model, ids, mask, last, unpad), ref) <= 1e-5


@pytest.mark.parametrize("unpad", UNPAD)
def test_rows_truncated_at_the_max_length(models, tiny_model, unpad):
    from transformers import AutoTokenizer

    model = models("mnli")
    limit = model.config.max_position_embeddings
    assert limit == 128
    tok = AutoTokenizer.from_pretrained(tiny_model)
    long_text = " ".join(["the football team won the league match today"] * 40)
    texts = [long_text, "A short one.", long_text, "Prices fell on the stock market."]
    hyps = ["This example is sports.", "This example is business."] * 2
    enc = tok(texts, hyps, truncation="only_first")["input_ids"]
    assert sorted(len(e) for e in enc)[-2:] == [limit, limit]
    for pairs in (enc, enc[::2]):  # mixed with short rows; all rows at the limit, no padding
        ids, mask, last = batch([np.array(e) for e in pairs])
        assert ids.shape[1] == limit
        ref = reference(model, ids, mask)
        assert max_diff(fast_logits(model, ids, mask, last, unpad), ref) <= 1e-5


@pytest.mark.parametrize("unpad", UNPAD)
@pytest.mark.parametrize("which", ["mnli", "noisy"])
def test_float64_is_the_same_computation(models, which, unpad):
    """In float64 rounding nearly vanishes: the only-last-position decoder, the absorbed
    single-query attention and the unpadded encoder are the same arithmetic as transformers'."""
    model = models(which, torch.float64)
    rng = np.random.default_rng(2)
    ids, mask, last = batch([pair(rng, n) for n in MIXED])
    with torch.inference_mode():
        fast = FastBartClassifier(model, unpad=unpad)
        encoded = fast.encode(ids, mask)
        y = fast.decode_last(ids, mask, last, encoded)
        out = model(input_ids=ids, attention_mask=mask, use_cache=False, output_hidden_states=True)
    real = mask.bool()
    assert max_diff(encoded[real], out.encoder_last_hidden_state[real]) <= 1e-12
    assert max_diff(y, out.decoder_hidden_states[-1][torch.arange(len(MIXED)), last]) <= 1e-12
    # forward returns float32: compare after the same cast
    assert max_diff(fast_logits(model, ids, mask, last, unpad), out.logits.float()) <= 1e-6


@pytest.mark.parametrize("unpad", UNPAD)
@pytest.mark.parametrize(("dtype", "tol"), [(torch.bfloat16, 0.15), (torch.float16, 0.02)])
@pytest.mark.parametrize("which", ["mnli", "noisy"])
def test_half_precision_is_close(models, which, dtype, tol, unpad):
    """Half precision: as close to the float32 answer as transformers' own run in that dtype."""
    rng = np.random.default_rng(3)
    ids, mask, last = batch([pair(rng, n) for n in MIXED])
    exact = reference(models(which), ids, mask)
    model = models(which, dtype)
    ref = reference(model, ids, mask)
    out = fast_logits(model, ids, mask, last, unpad)
    assert out.dtype == torch.float32
    ref_err = max_diff(ref, exact)
    assert max_diff(out, exact) <= max(tol, 2 * ref_err)
    assert max_diff(out, ref) <= max(tol, 2 * ref_err)


def test_several_decoder_layers(tiny_model):
    """bart-large-mnli style (12 decoder layers): the earlier ones run at every position."""
    from transformers import BartConfig, BartForSequenceClassification

    config = BartConfig.from_pretrained(tiny_model, decoder_layers=2, encoder_layers=1)
    torch.manual_seed(0)
    model = perturb(BartForSequenceClassification(config).eval())
    rng = np.random.default_rng(4)
    ids, mask, last = batch([pair(rng, n) for n in MIXED])
    ref = reference(model, ids, mask)
    for unpad in (False, True):
        assert max_diff(fast_logits(model, ids, mask, last, unpad), ref) <= 1e-5


def test_scaled_embeddings(tiny_model):
    """scale_embedding=True (embed_scale = sqrt(d_model)) is applied like transformers does."""
    from transformers import BartConfig, BartForSequenceClassification

    config = BartConfig.from_pretrained(tiny_model, scale_embedding=True)
    torch.manual_seed(0)
    model = perturb(BartForSequenceClassification(config).eval())
    rng = np.random.default_rng(5)
    ids, mask, last = batch([pair(rng, n) for n in (4, 20)])
    assert max_diff(fast_logits(model, ids, mask, last, False), reference(model, ids, mask)) <= 1e-5


def test_uses_the_models_parameters(models):
    model = models("mnli")
    fast = FastBartClassifier(model)
    assert {p.data_ptr() for p in fast.parameters()} == {p.data_ptr() for p in model.parameters()}
    assert sum(p.numel() for p in fast.parameters()) == sum(p.numel() for p in model.parameters())
    assert fast.config is model.config


def test_last_token_index():
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    assert last_token_index(mask).tolist() == [2, 3, 0]


def aten_ops(fn) -> set[str]:
    from torch.utils._python_dispatch import TorchDispatchMode

    seen: set[str] = set()

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.add(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    with torch.inference_mode(), Record():
        fn()
    return seen


# Ops whose output shape or value must be read on the host: a device sync, a graph break.
DATA_DEPENDENT = {"nonzero", "_local_scalar_dense", "masked_select", "unique_consecutive",
                  "_unique2", "unique_dim", "is_nonzero", "item"}  # fmt: skip


def test_padded_path_reads_no_tensor_values_on_the_host(models):
    model = models("mnli")
    rng = np.random.default_rng(6)
    ids, mask, last = batch([pair(rng, n) for n in MIXED])
    fast = FastBartClassifier(model, unpad=False)
    assert not aten_ops(lambda: fast(ids, mask, last)) & DATA_DEPENDENT
    # transformers' head does (unique_consecutive on the </s> counts, a boolean-mask select)
    assert aten_ops(lambda: reference(model, ids, mask)) & DATA_DEPENDENT


def test_supports(models, tiny_model):
    from transformers import BartConfig, BartForConditionalGeneration

    model = models("mnli")
    assert supports(model)
    assert not supports(model.model)  # the bare BartModel has no head
    assert not supports(torch.nn.Linear(2, 2))
    model.train()
    try:
        assert not supports(model)  # dropout is not implemented
        with pytest.raises(ValueError):
            FastBartClassifier(model)
    finally:
        model.eval()
    generator = BartForConditionalGeneration(BartConfig.from_pretrained(tiny_model)).eval()
    assert not supports(generator)
