"""Stage 1, `encode`: texts and hypotheses to NLI pair token ids, without the model weights.

Each text is tokenized once and each hypothesis once (cached by template and label); pairs are
then assembled from the pieces as `<s> text </s></s> hypothesis </s>` (the tokenizer's own pair
template), with only-first truncation to the model's limit. The result is identical to
`tokenizer(text, hypothesis, truncation="only_first")`, except that special-token strings
inside a text (`</s>`, `<s>`, `<pad>`) are encoded as plain text, never as control tokens.
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


def _pair_template(backend: Tokenizer) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split the post-processor's pair layout into prefix / middle / suffix special ids."""
    first = backend.encode("a", add_special_tokens=False)
    second = backend.encode("b", add_special_tokens=False)
    both = backend.post_process(first, second, add_special_tokens=True)
    seq_ids = both.sequence_ids
    parts: list[list[int]] = [[], [], []]
    part = 0
    for tok, sid in zip(both.ids, seq_ids):
        if sid is None:
            parts[part].append(tok)
        else:
            part = 1 if sid == 0 else 2
    return tuple(np.asarray(p, dtype=np.int32) for p in parts)  # type: ignore[return-value]


def resolve_max_length(tokenizer_max: int | None, max_positions: int | None) -> int:
    """The model's input limit: `model_max_length`, never beyond `max_position_embeddings`."""
    limits = [v for v in (tokenizer_max, max_positions) if v and v < 1_000_000]
    return min(limits) if limits else 512


class PairEncoder:
    """Builds pair ids from a `tokenizers.Tokenizer` (the fast tokenizer's backend)."""

    def __init__(self, backend: Tokenizer, max_length: int):
        # A private copy: the caller's tokenizer keeps its own truncation/padding settings.
        self._backend = Tokenizer.from_str(backend.to_str())
        self._backend.no_truncation()
        self._backend.no_padding()
        self._backend.encode_special_tokens = True
        self.prefix, self.middle, self.suffix = _pair_template(self._backend)
        self.num_special = len(self.prefix) + len(self.middle) + len(self.suffix)
        self.max_length = int(max_length)
        self._hypotheses: dict[tuple[str, str], np.ndarray] = {}

    @classmethod
    def from_tokenizer(cls, tokenizer, max_positions: int | None = None) -> PairEncoder:
        """From a transformers fast tokenizer (and the model config's position limit)."""
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise TypeError("a fast (tokenizers-backed) tokenizer is required")
        return cls(backend, resolve_max_length(tokenizer.model_max_length, max_positions))

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
            for _ in req.sequences:
                ids = next(text_ids)
                for hyp in h:
                    text = ids[: self.max_length - self.num_special - len(hyp)]
                    pieces += (self.prefix, text, self.middle, hyp, self.suffix)
                    lengths.append(self.num_special + len(text) + len(hyp))
            pairs = Pairs.from_lengths(np.concatenate(pieces), np.asarray(lengths, np.int64))
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
        return Pairs.from_lengths(src[index], lengths)

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
