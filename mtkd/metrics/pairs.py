"""Verification pairs: two samples, whether they belong to the same group, and their fold.

Pairs come from an LFW-format pairs file (:mod:`mtkd.metrics.lfw_pairs`, keyed by name) or
are drawn from the samples' group ids (:mod:`mtkd.metrics.pair_generation`, keyed by sample
index); :func:`index_pairs` turns names into sample indices, :func:`pair_labels` gives the
arrays :func:`mtkd.metrics.verification.verification_accuracy` scores.

Nothing here knows what the samples are: groups are any integer ids, keys any hashable.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np

from ..errors import DataError

K = TypeVar("K", bound=Hashable)

NamedKey = tuple[str, int]
"""A sample named as in LFW's ``pairs.txt``: (group name, 1-based number within the group)."""


@dataclass(frozen=True)
class Pair(Generic[K]):
    """Two samples, whether they belong to the same group, and the fold the pair is in."""

    a: K
    b: K
    same: bool
    fold: int


PairList = list[Pair[K]]


def index_pairs(
    pairs: Sequence[Pair[K]], index: Mapping[K, int], source: str = "pairs"
) -> PairList[int]:
    """Replace each pair's keys by sample indices (``index[key]``).

    Raises :class:`mtkd.DataError` listing (up to five of) the keys the data set lacks, so a
    pairs file that does not fit the images is reported before any embedding is computed.
    """
    missing = sorted({k for p in pairs for k in (p.a, p.b) if k not in index}, key=str)
    if missing:
        shown = ", ".join(map(str, missing[:5])) + (", ..." if len(missing) > 5 else "")
        raise DataError(f"{source}: {len(missing)} sample(s) not in the data set: {shown}")
    return [Pair(index[p.a], index[p.b], p.same, p.fold) for p in pairs]


def pair_labels(pairs: Sequence[Pair[Any]]) -> tuple[np.ndarray, np.ndarray]:
    """``(same, folds)`` arrays (bool, int64) in pair order, for the protocol."""
    same = np.fromiter((p.same for p in pairs), dtype=bool, count=len(pairs))
    folds = np.fromiter((p.fold for p in pairs), dtype=np.int64, count=len(pairs))
    return same, folds
