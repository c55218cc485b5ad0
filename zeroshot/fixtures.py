"""Random-weight models with the real BART architecture and a locally trained BART tokenizer.

Tests and benchmarks run without the hub: `tiny` is small and fast, `full` has the exact shape
of valhalla/distilbart-mnli-12-1 (12 encoder layers, 1 decoder layer, d_model 1024).
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


def make_test_model(
    directory: str | Path,
    size: str = "tiny",
    labels: Sequence[str] = MNLI_LABELS,
    seed: int = 0,
    init_std: float = 0.1,
    head_scale: float = 10.0,
) -> Path:
    """Write a random-weight BART sequence classifier and its tokenizer to `directory`.

    `labels` gives the label names in id order, so tests can put entailment at any id.
    `init_std` (5x BART's) and `head_scale` (on the classification head) make the random model
    input-dependent enough that labels get visibly different scores.
    """
    import torch
    from transformers import BartConfig, BartForSequenceClassification

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer_vocab = 2000 if size == "tiny" else 8000
    shape = _shape(size, tokenizer_vocab)
    tokenizer = train_tokenizer(tokenizer_vocab, shape["max_position_embeddings"], seed)
    config = BartConfig(
        **shape,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
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
    torch.manual_seed(seed)
    model = BartForSequenceClassification(config).eval()
    with torch.no_grad():
        model.classification_head.out_proj.weight.mul_(head_scale)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
