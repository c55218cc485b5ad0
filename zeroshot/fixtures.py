"""Random-weight NLI models with a family's real architecture and a locally trained tokenizer
of that family's kind: BART (the default), RoBERTa, DeBERTa-v2/v3 and BERT.

Tests and benchmarks run without the hub: `tiny` is small and fast, `full` (BART) has the
exact shape of valhalla/distilbart-mnli-12-1 (12 encoder layers, 1 decoder layer, d_model 1024).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

MNLI_LABELS = ("contradiction", "neutral", "entailment")

_WORDS = """
the a an of to and in is it that for on with as was by this be are from at or not have has had
but they you we he she his her their them what which when where who why how all any some many
most more less few each every both other such only own same so than too very can will just
should now new old good bad great small large long short high low first last next early late
young big little right left best better worst world life time year day week month news sport
sports football game team player match season win lost score goal coach league politics
election vote government minister party law court policy president senate tax budget economy
market stock price bank money business company trade growth jobs inflation investor science
research study data model computer software phone tablet internet network security health
doctor hospital disease virus vaccine patient medicine diet food travel city country music film
movie book art show song album actor director festival culture history weather rain storm sun
snow climate energy oil gas power car train flight airport road water river urgent problem
issue support help service order delivery refund account payment email password love happy sad
angry afraid calm excited bored tired hungry friendly polite rude strange technology education
school student teacher university exam class lesson family child parent
""".split()

_UNICODE = ["café", "naïve", "Zürich", "東京", "données", "Москва", "🙂", "🚀", "🎉", "—", "€", "ß"]


def corpus(n_sentences: int = 4000, seed: int = 0) -> list[str]:
    """A seeded pseudo-English corpus with punctuation, digits, unicode and emoji."""
    rng = random.Random(seed)
    out = []
    for _ in range(n_sentences):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(3, 25))]
        if rng.random() < 0.2:
            words.insert(rng.randrange(len(words)), rng.choice(_UNICODE))
        if rng.random() < 0.2:
            words.insert(rng.randrange(len(words)), str(rng.randint(0, 2030)))
        s = " ".join(words)
        out.append(s[0].upper() + s[1:] + rng.choice([".", "!", "?", ",", "."]))
    out += [f"This example is {w}." for w in _WORDS]
    return out


def train_tokenizer(vocab_size: int, model_max_length: int, seed: int = 0):
    """A byte-level BPE tokenizer with BART's special ids and pair template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # ids 0..4, as in BART
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(seed=seed), trainer=trainer)
    tok.post_processor = processors.RobertaProcessing(
        ("</s>", 2), ("<s>", 0), trim_offsets=True, add_prefix_space=False
    )
    assert [tok.token_to_id(s) for s in specials[:3]] == [0, 1, 2]
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
        model_max_length=model_max_length,
    )


def _shape(size: str, vocab_size: int) -> dict:
    if size == "tiny":
        return dict(
            vocab_size=vocab_size,
            d_model=64,
            encoder_layers=2,
            decoder_layers=1,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=128,
            decoder_ffn_dim=128,
            max_position_embeddings=128,
        )
    if size == "full":  # valhalla/distilbart-mnli-12-1
        return dict(
            vocab_size=50265,
            d_model=1024,
            encoder_layers=12,
            decoder_layers=1,
            encoder_attention_heads=16,
            decoder_attention_heads=16,
            encoder_ffn_dim=4096,
            decoder_ffn_dim=4096,
            max_position_embeddings=1024,
        )
    raise ValueError(f"size must be 'tiny' or 'full', got {size!r}")


ARCHS = ("bart", "roberta", "deberta-v2", "bert")
TWO_CLASS_LABELS = ("entailment", "not_entailment")


def make_test_model(
    directory: str | Path,
    size: str = "tiny",
    labels: Sequence[str] = MNLI_LABELS,
    seed: int = 0,
    init_std: float = 0.1,
    head_scale: float = 10.0,
    arch: str = "bart",
    max_positions: int | None = None,
) -> Path:
    """Write a random-weight NLI sequence classifier of `arch` and its tokenizer to
    `directory`: the family's real architecture and a tokenizer of its kind trained here
    (byte-level BPE for BART and RoBERTa, SentencePiece-style unigram for DeBERTa-v2/v3,
    WordPiece for BERT), with the family's pair template and token types.

    `labels` gives the label names in id order, so tests can put entailment at any id (or
    use a two-class head, `TWO_CLASS_LABELS`). `init_std` (5x the families' default) and
    `head_scale` (on the classification head's output layer) make the random model
    input-dependent enough that labels get visibly different scores. `size` 'full' is
    valhalla/distilbart-mnli-12-1's exact shape for BART, the family's base checkpoint's
    (12 layers, 768 wide, 512 tokens) for the others. `max_positions`: the longest input
    in tokens (default 128 tiny, 1024 full), e.g. a real checkpoint's limit.
    """
    import torch

    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    if size not in ("tiny", "full"):
        raise ValueError(f"size must be 'tiny' or 'full', got {size!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    head = {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {name: i for i, name in enumerate(labels)},
    }
    torch.manual_seed(seed)
    model, tokenizer = _BUILDERS[arch](size, head, seed, init_std, max_positions)
    model.eval()
    with torch.no_grad():
        _output_layer(model, len(labels)).weight.mul_(head_scale)
    _save(directory, model, tokenizer)
    return directory


def _output_layer(model, num_labels: int):
    """The classification head's last linear layer (its name differs by family)."""
    import torch

    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    return next(m for m in reversed(layers) if m.out_features == num_labels)


_TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
# size 'full' outside BART: the family's base checkpoint's shape (roberta-base, bert-base,
# deberta-v3-base: 12 layers, 768 wide), with its 512-token limit; the vocabulary stays the
# locally trained one (it sizes the embedding table, not the work per token).
_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
_BASE_POSITIONS = 512


_NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
_TINY_VOCAB, _TINY_POSITIONS = 2000, 128


def _encoder_shape(size: str, positions: int | None) -> tuple[dict, int]:
    if size == "full":
        return _BASE, positions or _BASE_POSITIONS
    return _TINY, positions or _TINY_POSITIONS


def _bart(size: str, head: dict, seed: int, init_std: float, positions: int | None):
    from transformers import BartConfig, BartForSequenceClassification

    tokenizer_vocab = 2000 if size == "tiny" else 8000
    shape = _shape(size, tokenizer_vocab)
    shape["max_position_embeddings"] = positions or shape["max_position_embeddings"]
    tokenizer = train_tokenizer(tokenizer_vocab, shape["max_position_embeddings"], seed)
    config = BartConfig(
        **shape,
        **head,
        bos_token_id=0,
        pad_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=2,
        forced_eos_token_id=2,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        classifier_dropout=0.0,
        scale_embedding=False,
        init_std=init_std,
    )
    return BartForSequenceClassification(config), tokenizer


def _roberta(size: str, head: dict, seed: int, init_std: float, positions: int | None):
    from transformers import RobertaConfig, RobertaForSequenceClassification

    shape, positions = _encoder_shape(size, positions)
    tokenizer = train_tokenizer(_TINY_VOCAB, positions, seed)
    config = RobertaConfig(
        vocab_size=_TINY_VOCAB,
        **shape,
        **_NO_DROPOUT,
        **head,
        # RoBERTa's positions start past the padding id: two more than the longest input.
        max_position_embeddings=positions + 2,
        type_vocab_size=1,
        bos_token_id=0,
        pad_token_id=1,
        eos_token_id=2,
        initializer_range=init_std,
    )
    return RobertaForSequenceClassification(config), tokenizer


def _bert(size: str, head: dict, seed: int, init_std: float, positions: int | None):
    from transformers import BertConfig, BertForSequenceClassification

    shape, positions = _encoder_shape(size, positions)
    tokenizer = train_wordpiece(_TINY_VOCAB, positions, seed)
    config = BertConfig(
        vocab_size=_TINY_VOCAB,
        **shape,
        **_NO_DROPOUT,
        **head,
        max_position_embeddings=positions,
        type_vocab_size=2,
        pad_token_id=0,
        initializer_range=init_std,
    )
    return BertForSequenceClassification(config), tokenizer


def _deberta_v2(size: str, head: dict, seed: int, init_std: float, positions: int | None):
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    shape, positions = _encoder_shape(size, positions)
    tokenizer = train_unigram(_TINY_VOCAB, positions, seed)
    # DeBERTa-v3's shape: relative attention with position buckets, no absolute positions,
    # no token type embeddings (type_vocab_size 0: the types the tokenizer makes are unused).
    config = DebertaV2Config(
        vocab_size=_TINY_VOCAB,
        **shape,
        **_NO_DROPOUT,
        **head,
        max_position_embeddings=positions,
        type_vocab_size=0,
        relative_attention=True,
        position_buckets=32,
        max_relative_positions=-1,
        position_biased_input=False,
        pos_att_type=["p2c", "c2p"],
        norm_rel_ebd="layer_norm",
        share_att_key=True,
        pooler_dropout=0.0,
        pooler_hidden_size=shape["hidden_size"],
        pad_token_id=0,
        initializer_range=init_std,
    )
    return DebertaV2ForSequenceClassification(config), tokenizer


_BUILDERS = {"bart": _bart, "roberta": _roberta, "deberta-v2": _deberta_v2, "bert": _bert}


def _bert_style(tok, specials: list[str], model_max_length: int, tokenizer_class: str):
    """The `[CLS] a [SEP] b [SEP]` template with token types 0 0 0 1 1, wrapped as the
    family's transformers tokenizer (whose model inputs include token_type_ids)."""
    import transformers
    from tokenizers import processors

    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    wrapper = getattr(transformers, tokenizer_class)
    return wrapper(
        tokenizer_object=tok,
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        unk_token="[UNK]",
        mask_token="[MASK]",
        model_max_length=model_max_length,
    )


def train_wordpiece(vocab_size: int, model_max_length: int, seed: int = 0):
    """A WordPiece tokenizer as BERT's (lower-cased, [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=specials, show_progress=False
    )
    tok.train_from_iterator(corpus(seed=seed), trainer=trainer)
    return _bert_style(tok, specials, model_max_length, "BertTokenizer")


def train_unigram(vocab_size: int, model_max_length: int, seed: int = 0):
    """A SentencePiece-style unigram tokenizer as DeBERTa-v2/v3's (Metaspace, [PAD]=0
    [CLS]=1 [SEP]=2 [UNK]=3)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    specials = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"]
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=specials, unk_token="[UNK]", show_progress=False
    )
    tok.train_from_iterator(corpus(seed=seed), trainer=trainer)
    return _bert_style(tok, specials, model_max_length, "DebertaV2Tokenizer")


def _save(directory: str | Path, model, tokenizer) -> None:
    """Both to `directory`, without transformers' progress bar (one shard of a tiny model)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
