"""`Pairs`: NLI pair token ids in one flat array, the shape pairs have in every stage.

Pair `i` is `ids[offsets[i]:offsets[i + 1]]`. One buffer, not one small array per pair: it
pickles (Serve handle, Ray object store) and pads (numpy gathers) without a Python object per
pair, and many requests' pairs concatenate into one batch and split back by counts.

For models that read token type ids (BERT-style cross-encoders), `segments[i]` is where pair
`i`'s second segment (type 1) begins: the types are 0 before it and 1 from it to the pair's
end, as every such tokenizer's pair template lays them out. None for the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from zeroshot.errors import InvalidInputError


@dataclass(frozen=True)
class Pairs:
    ids: np.ndarray  # int32, every pair's ids back to back
    offsets: np.ndarray  # int64, len(pairs) + 1, starting at 0
    segments: np.ndarray | None = None  # int32, len(pairs): where type 1 begins, or None

    @classmethod
    def from_lengths(
        cls, ids: np.ndarray, lengths: np.ndarray, segments: np.ndarray | None = None
    ) -> Pairs:
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        if segments is not None:
            segments = np.asarray(segments, dtype=np.int32)
        return cls(np.asarray(ids, dtype=np.int32), offsets, segments)

    @classmethod
    def from_list(cls, pairs: Sequence[np.ndarray], segments: Sequence[int] | None = None) -> Pairs:
        lengths = np.fromiter((len(p) for p in pairs), dtype=np.int64, count=len(pairs))
        ids = np.concatenate(pairs).astype(np.int32, copy=False) if len(pairs) else _NO_IDS
        return cls.from_lengths(ids, lengths, None if segments is None else np.asarray(segments))

    @classmethod
    def concat(cls, parts: Sequence[Pairs]) -> Pairs:
        """All parts' pairs, in order (split the results back with `counts`)."""
        if len(parts) == 1:
            return parts[0]
        if not parts:
            return cls.from_lengths(_NO_IDS, np.zeros(0, np.int64))
        ids = np.concatenate([p.ids for p in parts])
        typed = [p.segments is not None for p in parts]
        if any(typed) and not all(typed):
            raise InvalidInputError("pairs with and without token types cannot be joined")
        segments = np.concatenate([p.segments for p in parts]) if all(typed) else None
        return cls.from_lengths(ids, np.concatenate([p.lengths for p in parts]), segments)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def num_tokens(self) -> int:
        return int(self.offsets[-1])

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i] : self.offsets[i + 1]]

    def to_list(self) -> list[np.ndarray]:
        return [self[i] for i in range(len(self))]

    def take(self, indices: np.ndarray) -> Pairs:
        """The pairs at `indices`, in that order."""
        lengths = self.lengths[indices]
        width = int(lengths.max(initial=0))
        block = self.gather(indices, lengths, width)
        segments = None if self.segments is None else self.segments[indices]
        return Pairs.from_lengths(block[np.arange(width) < lengths[:, None]], lengths, segments)

    def gather(self, indices: np.ndarray, lengths: np.ndarray, width: int) -> np.ndarray:
        """`[len(indices), width]` ids of the pairs at `indices`, each row's tail past its
        length holding its last id (callers mask it)."""
        cols = np.arange(width, dtype=np.int64)
        last = np.maximum(lengths - 1, 0)
        positions = self.offsets[indices][:, None] + np.minimum(cols[None, :], last[:, None])
        return self.ids[positions]

    def check(self, vocab_size: int, max_length: int) -> None:
        """Refuse ids the model cannot embed before they can join (and break) a shared batch."""
        ids, offsets = self.ids, self.offsets
        if not isinstance(ids, np.ndarray) or not isinstance(offsets, np.ndarray):
            raise InvalidInputError("pairs must be numpy arrays")
        if ids.ndim != 1 or offsets.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
            raise InvalidInputError("pairs must be a flat integer id array and offsets")
        if len(offsets) < 2:
            raise InvalidInputError("no pairs to score")
        lengths = np.diff(offsets)
        if offsets[0] != 0 or int(lengths.min()) < 1 or int(lengths.max()) > max_length:
            raise InvalidInputError(f"every pair needs 1 to {max_length} tokens")
        if int(offsets[-1]) != len(ids):
            raise InvalidInputError("the lengths do not add up to the number of ids")
        if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
            raise InvalidInputError(f"token ids must lie in [0, {vocab_size})")
        seg = self.segments
        if seg is not None and (
            not isinstance(seg, np.ndarray)
            or seg.shape != (len(lengths),)
            or (len(seg) and (int(seg.min()) < 0 or (seg > lengths).any()))
        ):
            raise InvalidInputError("segments must give each pair's type-1 start (0..length)")


_NO_IDS = np.zeros(0, dtype=np.int32)


def split(values: np.ndarray, counts: Sequence[int]) -> list[np.ndarray]:
    """`values` cut into consecutive slices of `counts` rows (views, no copies)."""
    bounds = np.cumsum(counts)[:-1]
    return np.split(values, bounds) if len(counts) else []
