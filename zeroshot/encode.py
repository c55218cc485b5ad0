"""Stage 1, `encode`: texts and hypotheses to NLI pair token ids, without the model weights.

Each text is tokenized once and each hypothesis once (cached by template and label); pairs are
then assembled from the pieces in the tokenizer's own pair template (read from its
post-processor: `<s> text </s></s> hypothesis </s>` for BART and RoBERTa, `[CLS] text [SEP]
hypothesis [SEP]` for BERT and DeBERTa), with only-first truncation to the model's limit, and
where the model reads them, the token type ids the template gives (as a segment start). The
result is identical to `tokenizer(text, hypothesis, truncation="only_first")`, except that
special-token strings inside a text (`</s>`, `[SEP]`, `<pad>`, ...) are encoded as plain text,
never as control tokens.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer

from zeroshot.errors import HypothesisTooLongError, ZeroShotError
from zeroshot.pairs import Pairs
from zeroshot.requests import ClassificationRequest, format_hypothesis

_HYPOTHESIS_CACHE_SIZE = 65_536


@dataclass
class EncodedRequest:
    """Pair ids of one request, sequence-major: pair `i * n_labels + j` is (sequence i, label j)."""

    request: ClassificationRequest
    pairs: Pairs

    @property
    def num_tokens(self) -> int:
        return self.pairs.num_tokens


@dataclass(frozen=True)
class PairTemplate:
    """The tokenizer's pair layout `prefix text middle hypothesis suffix` (special ids), and
    where its token type ids turn to 1: `type_start` tokens into the middle (0 for BERT's
    `[CLS] a [SEP] b [SEP]`, types 0 0 0 1 1), or None when every type id is 0."""

    prefix: np.ndarray
    middle: np.ndarray
    suffix: np.ndarray
    type_start: int | None


def pair_template(backend: Tokenizer) -> PairTemplate:
    """Read the post-processor's pair layout (its special ids and type ids), by where two
    probe texts land in the pair it builds (post-processors differ in what else they mark)."""
    first = backend.encode("a", add_special_tokens=False)
    second = backend.encode("b", add_special_tokens=False)
    both = backend.post_process(first, second, add_special_tokens=True)
    ids, types, a, b = list(both.ids), list(both.type_ids), list(first.ids), list(second.ids)
    start_a = _find(ids, a, 0)
    start_b = _find(ids, b, start_a + len(a))
    cuts = (0, start_a, start_a + len(a), start_b, start_b + len(b), len(ids))
    # prefix, text, middle, hypothesis, suffix
    spans = [(cuts[i], cuts[i + 1]) for i in range(5)]
    seg_types = [types[lo:hi] for lo, hi in spans]
    type_start = None
    if any(types):
        # Every NLI tokenizer's layout: 0 up to somewhere in the middle, 1 from there on.
        middle = seg_types[2]
        zeros = len(middle) - sum(middle)
        if (any(seg_types[0] + seg_types[1]) or middle != [0] * zeros + [1] * (len(middle) - zeros)
                or not all(t == 1 for t in seg_types[3] + seg_types[4])):  # fmt: skip
            raise ValueError(f"unsupported token type layout for a pair: {seg_types}")
        type_start = zeros
    prefix, middle_ids, suffix = (
        np.asarray(ids[lo:hi], dtype=np.int32) for lo, hi in (spans[0], spans[2], spans[4])
    )
    return PairTemplate(prefix, middle_ids, suffix, type_start)


def _find(haystack: list[int], needle: list[int], start: int) -> int:
    for i in range(start, len(haystack) - len(needle) + 1):
        if haystack[i : i + len(needle)] == needle:
            return i
    raise ValueError("the tokenizer's pair template does not hold its two sequences")


def uses_token_types(tokenizer, config) -> bool:
    """Whether the model reads token type ids, as the transformers pipeline decides to pass
    them (the tokenizer names them among its model inputs) and the model has more than one
    type to embed (RoBERTa's single type and DeBERTa-v3's none make them no-ops)."""
    names = getattr(tokenizer, "model_input_names", ()) or ()
    return "token_type_ids" in names and int(getattr(config, "type_vocab_size", 0) or 0) > 1


def resolve_max_length(tokenizer_max: int | None, max_positions: int | None) -> int:
    """The model's input limit: `model_max_length`, never beyond `max_position_embeddings`."""
    limits = [v for v in (tokenizer_max, max_positions) if v and v < 1_000_000]
    return min(limits) if limits else 512


class PairEncoder:
    """Builds pair ids from a `tokenizers.Tokenizer` (the fast tokenizer's backend)."""

    def __init__(self, backend: Tokenizer, max_length: int, token_types: bool = False):
        # A private copy: the caller's tokenizer keeps its own truncation/padding settings.
        self._backend = Tokenizer.from_str(backend.to_str())
        self._backend.no_truncation()
        self._backend.no_padding()
        self._backend.encode_special_tokens = True
        template = pair_template(self._backend)
        self.prefix, self.middle, self.suffix = template.prefix, template.middle, template.suffix
        self.num_special = len(self.prefix) + len(self.middle) + len(self.suffix)
        # Where type 1 begins past the text (None: the pairs carry no token types, because
        # the model does not read them or the template makes them all 0).
        self.type_offset = (
            len(self.prefix) + template.type_start
            if token_types and template.type_start is not None
            else None
        )
        self.max_length = int(max_length)
        self._hypotheses: dict[tuple[str, str], np.ndarray] = {}

    @classmethod
    def from_tokenizer(
        cls, tokenizer, max_positions: int | None = None, token_types: bool = False
    ) -> PairEncoder:
        """From a transformers fast tokenizer (and the model config's position limit);
        `token_types`: the model reads token type ids (see `uses_token_types`)."""
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise TypeError("a fast (tokenizers-backed) tokenizer is required")
        max_length = resolve_max_length(tokenizer.model_max_length, max_positions)
        return cls(backend, max_length, token_types)

    def hypothesis_ids(self, template: str, label: str) -> np.ndarray:
        key = (template, label)
        ids = self._hypotheses.get(key)
        if ids is None:
            text = format_hypothesis(template, label)
            ids = np.asarray(
                self._backend.encode(text, add_special_tokens=False).ids, dtype=np.int32
            )
            if len(self._hypotheses) >= _HYPOTHESIS_CACHE_SIZE:
                self._hypotheses.clear()
            self._hypotheses[key] = ids
        return ids

    def tokenize(self, texts: Sequence[str]) -> list[np.ndarray]:
        # The fast batch call skips the character offsets nothing here reads.
        encodings = self._backend.encode_batch_fast(list(texts), add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.int32) for e in encodings]

    def encode(self, request: ClassificationRequest) -> EncodedRequest:
        result = self.encode_many([request])[0]
        if isinstance(result, ZeroShotError):
            raise result
        return result

    def encode_many(
        self, requests: Sequence[ClassificationRequest]
    ) -> list[EncodedRequest | ZeroShotError]:
        """Encode many requests with one tokenizer call; a bad request yields its error in place."""
        hyps: list[list[np.ndarray] | ZeroShotError] = []
        for req in requests:
            try:
                hyps.append(self._hypotheses_for(req))
            except ZeroShotError as exc:
                hyps.append(exc)
        texts = [t for req, h in zip(requests, hyps) if isinstance(h, list) for t in req.sequences]
        text_ids = iter(self.tokenize(texts))
        out: list[EncodedRequest | ZeroShotError] = []
        for req, h in zip(requests, hyps):
            if isinstance(h, ZeroShotError):
                out.append(h)
                continue
            pieces: list[np.ndarray] = []
            lengths: list[int] = []
            kept: list[int] = []
            for _ in req.sequences:
                ids = next(text_ids)
                for hyp in h:
                    text = ids[: self.max_length - self.num_special - len(hyp)]
                    pieces += (self.prefix, text, self.middle, hyp, self.suffix)
                    lengths.append(self.num_special + len(text) + len(hyp))
                    kept.append(len(text))
            segments = None
            if self.type_offset is not None:
                segments = self.type_offset + np.asarray(kept, np.int64)
            pairs = Pairs.from_lengths(
                np.concatenate(pieces), np.asarray(lengths, np.int64), segments
            )
            out.append(EncodedRequest(req, pairs))
        return out

    def encode_texts(self, texts: Sequence[str], labels: Sequence[str], template: str) -> Pairs:
        """Pairs of every text with every label (text-major), as `encode_many` builds them for
        one request, assembled with whole-array numpy operations instead of per-pair slices:
        what a block of thousands of rows wants. Raises `HypothesisTooLongError`."""
        request = ClassificationRequest((), tuple(labels), template)
        hyps = self._hypotheses_for(request)
        encodings = self._backend.encode_batch_fast(list(texts), add_special_tokens=False)
        ids = [e.ids for e in encodings]
        text_len = np.fromiter(map(len, ids), np.int64, len(ids))
        flat = np.fromiter(itertools.chain.from_iterable(ids), np.int32, int(text_len.sum()))
        return self.pairs_from_text_ids(flat, text_len, hyps)

    def pairs_from_text_ids(
        self, flat: np.ndarray, text_len: np.ndarray, hyps: Sequence[np.ndarray]
    ) -> Pairs:
        """Pairs `<s> text </s></s> hypothesis </s>` of every text (ids back to back, `text_len`
        each) with every hypothesis, the text cut to fit the model (only-first truncation)."""
        n, n_hyp = len(text_len), len(hyps)
        hyp_len = np.fromiter(map(len, hyps), np.int64, n_hyp)
        pre, mid, suf = self.prefix, self.middle, self.suffix
        # One source buffer; every pair is 5 segments of it: prefix, text, middle, hyp, suffix.
        src = np.concatenate([flat, *hyps, pre, mid, suf]).astype(np.int32, copy=False)
        hyp_base = len(flat) + np.concatenate(([0], np.cumsum(hyp_len)[:-1])).astype(np.int64)
        pre_base = len(flat) + int(hyp_len.sum())
        mid_base, suf_base = pre_base + len(pre), pre_base + len(pre) + len(mid)
        text_start = np.concatenate(([0], np.cumsum(text_len)[:-1])).astype(np.int64)
        keep = np.minimum(text_len[:, None], self.max_length - self.num_special - hyp_len[None])
        seg_start = np.empty((n, n_hyp, 5), np.int64)
        seg_len = np.empty((n, n_hyp, 5), np.int64)
        seg_start[..., 0], seg_len[..., 0] = pre_base, len(pre)
        seg_start[..., 1], seg_len[..., 1] = text_start[:, None], keep
        seg_start[..., 2], seg_len[..., 2] = mid_base, len(mid)
        seg_start[..., 3], seg_len[..., 3] = hyp_base[None], hyp_len[None]
        seg_start[..., 4], seg_len[..., 4] = suf_base, len(suf)
        seg_start, seg_len = seg_start.reshape(-1), seg_len.reshape(-1)
        total = int(seg_len.sum())
        seg_out = np.concatenate(([0], np.cumsum(seg_len)[:-1]))
        index = np.repeat(seg_start - seg_out, seg_len) + np.arange(total, dtype=np.int64)
        lengths = seg_len.reshape(-1, 5).sum(axis=1)
        segments = None if self.type_offset is None else self.type_offset + keep.reshape(-1)
        return Pairs.from_lengths(src[index], lengths, segments)

    def _hypotheses_for(self, req: ClassificationRequest) -> list[np.ndarray]:
        hyps = [self.hypothesis_ids(req.hypothesis_template, label) for label in req.labels]
        room = self.max_length - self.num_special - 1
        for label, hyp in zip(req.labels, hyps):
            if len(hyp) > room:
                raise HypothesisTooLongError(
                    f'the hypothesis for label "{label[:80]}" is {len(hyp)} tokens; with the text '
                    f"it must fit in the model's {self.max_length}-token limit (at most {room})."
                )
        return hyps
