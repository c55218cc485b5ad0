"""Stage 1, `encode`: texts and hypotheses to NLI pair token ids, without the model weights.

Each text is tokenized once and each hypothesis once (cached by template and label); pairs are
then assembled from the pieces as `<s> text </s></s> hypothesis </s>` (the tokenizer's own pair
template), with only-first truncation to the model's limit. The result is identical to
`tokenizer(text, hypothesis, truncation="only_first")`, except that special-token strings
inside a text (`</s>`, `<s>`, `<pad>`) are encoded as plain text, never as control tokens.
"""

from __future__ import annotations

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
        encodings = self._backend.encode_batch(list(texts), add_special_tokens=False)
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
