"""`encode`: pair ids identical to the tokenizer's pair encoding; special strings stay text."""

from __future__ import annotations

import numpy as np
import pytest
from reference import assert_same_result
from transformers import AutoTokenizer

from zeroshot import ClassificationRequest, Frontend, ZeroShotClassifier

TEXTS = [
    "Hello world",
    "The football team won the league after a great season!",
    "Le café à Zürich 🙂 est très bon 🎉 東京",
    "  leading and trailing spaces  ",
    "numbers 123 4567 and punctuation?!...",
    "growth " * 200,  # truncated
]


@pytest.fixture(scope="module")
def frontend(tiny_model) -> Frontend:
    return Frontend.from_pretrained(tiny_model)


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return AutoTokenizer.from_pretrained(tiny_model)


def test_bart_special_ids_and_pair_layout(tokenizer):
    assert (tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert tokenizer.convert_tokens_to_ids(["<s>", "<pad>", "</s>"]) == [0, 1, 2]
    ids = tokenizer("a b", "c")["input_ids"]
    a = tokenizer("a b", add_special_tokens=False)["input_ids"]
    c = tokenizer("c", add_special_tokens=False)["input_ids"]
    assert ids == [0, *a, 2, 2, *c, 2]  # <s> A </s></s> B </s>


def test_pair_ids_identical_to_tokenizer(frontend, tokenizer):
    labels = ["sports", "not urgent", "café 🙂", "a much longer label with many words in it"]
    for template in ("This example is {}.", "Topic: {}"):
        req = ClassificationRequest.create(TEXTS, labels, template)
        encoded = frontend.encode(req)
        assert len(encoded.pairs) == len(TEXTS) * len(labels)
        for i, text in enumerate(TEXTS):
            for j, label in enumerate(labels):
                expected = tokenizer(text, template.format(label), truncation="only_first")
                got = encoded.pairs[i * len(labels) + j]
                assert got.tolist() == expected["input_ids"], (text, label)
                assert len(got) <= frontend.max_length


def test_max_length_never_beyond_position_embeddings(frontend):
    assert frontend.max_length == min(
        frontend.tokenizer.model_max_length, frontend.config.max_position_embeddings
    )


def test_hypotheses_are_cached(frontend):
    frontend.encoder._hypotheses.clear()
    frontend.encode(ClassificationRequest.create(TEXTS[:2], ["x", "y"]))
    frontend.encode(ClassificationRequest.create(TEXTS[2:], ["y", "x"]))
    assert set(frontend.encoder._hypotheses) == {("This example is {}.", "x"),
                                                 ("This example is {}.", "y")}  # fmt: skip


@pytest.mark.parametrize(
    "text",
    ["</s>", "a </s></s> b", "<s> hi", "<pad><pad> text", "x</s>y<s>z<pad>", "<mask> <unk>"],
)
def test_special_token_strings_are_plain_text(frontend, text):
    (pair,) = frontend.encode(ClassificationRequest.create(text, ["sports"])).pairs
    # exactly the template's specials: one <s>, three </s>, no <pad>
    assert (pair == 0).sum() == 1 and (pair == 2).sum() == 3 and (pair == 1).sum() == 0


def test_special_token_strings_do_not_disturb_a_batch(tiny_model):
    clf = ZeroShotClassifier.from_pretrained(tiny_model, dtype="float32")
    labels = ["sports", "politics", "technology"]
    clean = clf(TEXTS[1], labels)
    mixed = clf(["</s></s> <s> evil <pad>", TEXTS[1], "</s>"], labels)
    assert_same_result(mixed[1], clean, tol=1e-6)  # padding differs, nothing else
    assert all(np.isfinite(r["scores"]).all() for r in mixed)
    # a special string reads like the same characters as text, not like a separator
    assert clf("</s>", labels)["sequence"] == "</s>"


def test_encode_many_isolates_bad_requests(frontend):
    from zeroshot.errors import HypothesisTooLongError

    good = ClassificationRequest.create("fine", ["a"])
    bad = ClassificationRequest.create("fine", ["word " * 500])
    out = frontend.encode_many([good, bad, good])
    assert isinstance(out[1], HypothesisTooLongError)
    assert out[0].pairs[0].tolist() == out[2].pairs[0].tolist()
