"""Pair verification, LFW protocol: k-fold threshold selection over pair distances.

A verification benchmark is a list of pairs of samples, each marked *same group* (matched) or
not (mismatched), and split into folds. For each fold, the distance threshold that best
separates matched from mismatched pairs on the *other* folds is applied to the held-out fold;
the score is the mean ± std of the per-fold accuracies (the LFW "unrestricted" view-2 protocol,
``vis-www.cs.umass.edu/lfw/README.txt``, as implemented by InsightFace's
``recognition/arcface_torch/eval/verification.py``).

The pieces, in the order a caller uses them, one module each:

- pairs (:mod:`mtkd.metrics.pairs`): :func:`~mtkd.metrics.lfw_pairs.read_lfw_pairs` (an
  LFW-format ``pairs.txt``) or :func:`~mtkd.metrics.pair_generation.generate_pairs`
  (deterministic pairs from per-sample group ids, for data sets without a pairs file);
  :func:`~mtkd.metrics.pairs.index_pairs` maps keys to sample indices,
  :func:`~mtkd.metrics.pairs.pair_labels` gives the arrays;
- embeddings: :func:`mtkd.model.embedding.embed_with_flip` (image + horizontal flip, summed,
  L2-normalised);
- here: :func:`pair_distances`, then :func:`verification_accuracy`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..model.embedding import l2_normalize
from .pairs import Pair


def pair_distances(
    embeddings: np.ndarray,
    pairs: Sequence[Pair[int]] | np.ndarray,
    metric: Literal["squared_l2", "cosine"] = "squared_l2",
) -> np.ndarray:
    """Distance of each pair, computed on L2-normalised embeddings (normalised here).

    ``squared_l2`` (default, InsightFace's choice) is ``||u - v||²`` in [0, 4]; ``cosine`` is
    ``1 - u·v`` in [0, 2]. On unit vectors ``||u - v||² = 2 (1 - u·v)``, so the two rank pairs
    identically and give the same verification accuracy; only the thresholds differ, by a
    factor of 2.
    ``pairs`` are :class:`Pair` objects with sample indices, or an (n, 2) index array.
    """
    if isinstance(pairs, np.ndarray):
        index = pairs.astype(np.int64).reshape(-1, 2)
    else:
        index = np.array([(p.a, p.b) for p in pairs], dtype=np.int64).reshape(-1, 2)
    emb = l2_normalize(np.asarray(embeddings, dtype=np.float64))
    if emb.ndim != 2:
        raise ValueError(f"embeddings must be (N, D), got shape {emb.shape}")
    if index.size and (index.min() < 0 or index.max() >= emb.shape[0]):
        raise ValueError(
            f"pair indices must be in [0, {emb.shape[0]}), got {index.min()}..{index.max()}"
        )
    u, v = emb[index[:, 0]], emb[index[:, 1]]
    if metric == "squared_l2":
        return np.asarray(np.sum((u - v) ** 2, axis=1))
    if metric == "cosine":
        return np.asarray(1.0 - np.sum(u * v, axis=1))
    raise ValueError(f"unknown metric '{metric}' (expected 'squared_l2' or 'cosine')")


@dataclass(frozen=True)
class VerificationResult:
    """Per-fold accuracies and thresholds (in fold order), their mean and population std."""

    folds: tuple[int, ...]
    accuracies: tuple[float, ...]
    thresholds: tuple[float, ...]
    mean: float
    std: float
    n_pairs: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy_mean": self.mean,
            "accuracy_std": self.std,
            "n_pairs": self.n_pairs,
            "folds": list(self.folds),
            "fold_accuracies": list(self.accuracies),
            "fold_thresholds": list(self.thresholds),
        }


def candidate_thresholds(distances: np.ndarray) -> np.ndarray:
    """Midpoints between consecutive sorted unique distances, plus the two ends.

    A pair is called *same* when ``distance < threshold``. The low end is the smallest
    distance (nothing is below it: every pair called different) and the high end the next
    float above the largest (every pair called same); the ends hug the data rather than
    sitting at an arbitrary margin, so they do not depend on the distance's scale.
    """
    u = np.unique(distances)
    return np.concatenate([u[:1], (u[:-1] + u[1:]) / 2, np.nextafter(u[-1:], np.inf)])


def best_threshold(distances: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """``(threshold, accuracy)`` maximising accuracy of ``distance < threshold`` ⇔ same.

    Every candidate of :func:`candidate_thresholds` is scored exactly (sorted counts, no
    grid); among equally accurate thresholds the smallest wins, as ``np.argmax`` picks the
    first in InsightFace's ascending grid.
    """
    candidates = candidate_thresholds(distances)
    same_d = np.sort(distances[same])
    diff_d = np.sort(distances[~same])
    same_below = np.searchsorted(same_d, candidates, side="left")  # matched called same
    diff_below = np.searchsorted(diff_d, candidates, side="left")  # mismatched called same
    correct = same_below + (diff_d.size - diff_below)
    best = int(np.argmax(correct))
    return float(candidates[best]), float(correct[best]) / distances.size


def verification_accuracy(
    distances: np.ndarray, same: np.ndarray, folds: np.ndarray
) -> VerificationResult:
    """The LFW protocol: for each fold, tune the threshold on the other folds, test on it.

    ``distances`` (smaller = more alike), ``same`` (bool) and ``folds`` (any integer fold
    labels, at least two distinct) are per pair. Fold ``k``'s threshold is
    :func:`best_threshold` over the pairs of all other folds pooled; its accuracy is the
    fraction of fold ``k``'s pairs it classifies correctly. ``std`` is the population
    standard deviation (``np.std``, ddof=0), as InsightFace reports it.
    """
    d = np.asarray(distances, dtype=np.float64)
    s = np.asarray(same)
    f = np.asarray(folds)
    if d.ndim != 1 or s.shape != d.shape or f.shape != d.shape:
        raise ValueError(
            f"distances, same and folds must be 1-D and equally long, got shapes "
            f"{d.shape}, {s.shape}, {f.shape}"
        )
    if s.dtype != bool:
        if not np.isin(s, (0, 1)).all():
            raise ValueError("same must be boolean (or 0/1)")
        s = s.astype(bool)
    if not np.isfinite(d).all():
        raise ValueError(f"{int((~np.isfinite(d)).sum())} distance(s) are not finite")
    labels = np.unique(f)
    if labels.size < 2:
        raise ValueError(f"need at least two folds, got {labels.size}")

    accuracies: list[float] = []
    thresholds: list[float] = []
    for k in labels:
        test = f == k
        threshold, _ = best_threshold(d[~test], s[~test])
        accuracies.append(float(np.mean((d[test] < threshold) == s[test])))
        thresholds.append(threshold)
    return VerificationResult(
        folds=tuple(int(k) for k in labels),
        accuracies=tuple(accuracies),
        thresholds=tuple(thresholds),
        mean=float(np.mean(accuracies)),
        std=float(np.std(accuracies)),
        n_pairs=int(d.size),
    )
