"""What crosses the ingress -> classifier handle: one request's pairs as a flat id array plus
lengths (one buffer pickles far cheaper than hundreds of small arrays). No torch here."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pack_pairs(pairs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.fromiter((len(p) for p in pairs), dtype=np.int32, count=len(pairs))
    ids = np.concatenate(pairs).astype(np.int32, copy=False) if pairs else np.zeros(0, np.int32)
    return ids, lengths


def unpack_pairs(ids: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
    """The pairs again, as views into `ids` (no copies)."""
    bounds = np.concatenate(([0], np.cumsum(lengths, dtype=np.int64)))
    return [ids[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
