"""Verification pairs drawn from the samples' group ids, for data sets without a pairs file.

Deterministic (a pure function of the groups, fold count, pairs per fold and seed), and
group-disjoint across folds whenever the groups allow it: see :func:`generate_pairs`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from ..errors import DataError
from .pairs import Pair, PairList


def _triangle_decode(index: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Map linear indices in [0, m(m-1)/2) to pairs (i, j), i < j, in row-major order."""
    starts = np.concatenate([[0], np.cumsum(np.arange(m - 1, 0, -1))])  # row i starts here
    i = np.searchsorted(starts, index, side="right") - 1
    j = index - starts[i] + i + 1
    return i, j


def _round_robin_quota(capacity: np.ndarray, n: int) -> np.ndarray:
    """Deal ``n`` items one at a time to each slot in order, skipping full slots.

    Spreads pairs over as many groups (or group pairs) as possible before any gets a second.
    """
    quota = np.zeros_like(capacity)
    remaining = n
    while remaining > 0:
        open_slots = np.flatnonzero(quota < capacity)
        if open_slots.size == 0:
            break
        take = open_slots[:remaining]
        quota[take] += 1
        remaining -= take.size
    return quota


def _matched(members: list[np.ndarray], n: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """``n`` distinct same-group pairs, spread over the groups (round robin, shuffled order)."""
    order = rng.permutation(len(members))
    sizes = np.array([len(members[g]) for g in order], dtype=np.int64)
    quota = _round_robin_quota(sizes * (sizes - 1) // 2, n)
    out: list[tuple[int, int]] = []
    for g, m, q in zip(order, sizes, quota, strict=True):
        if q == 0:
            continue
        i, j = _triangle_decode(rng.choice(m * (m - 1) // 2, size=q, replace=False), int(m))
        out.extend(zip(members[g][i].tolist(), members[g][j].tolist(), strict=True))
    return out


def _mismatched(
    members: list[np.ndarray], n: int, rng: np.random.Generator
) -> list[tuple[int, int]]:
    """``n`` distinct cross-group pairs, spread over group pairs (round robin, shuffled order).

    With at least ``n`` group pairs, ``n`` distinct group pairs are drawn (one sample pair
    each) without listing all of them; otherwise every group pair is used, in random order.
    """
    g = len(members)
    n_group_pairs = g * (g - 1) // 2
    if n_group_pairs >= n:
        gi, gj = _triangle_decode(rng.choice(n_group_pairs, size=n, replace=False), g)
        quota = np.ones(n, dtype=np.int64)
    else:
        gi, gj = _triangle_decode(rng.permutation(n_group_pairs), g)
        sizes = np.array([len(m) for m in members], dtype=np.int64)
        quota = _round_robin_quota(sizes[gi] * sizes[gj], n)
    out: list[tuple[int, int]] = []
    for x, y, q in zip(gi.tolist(), gj.tolist(), quota.tolist(), strict=True):
        if q == 0:
            continue
        mx, my = members[x], members[y]
        cells = rng.choice(len(mx) * len(my), size=q, replace=False)
        for c in cells.tolist():
            a, b = int(mx[c // len(my)]), int(my[c % len(my)])
            out.append((min(a, b), max(a, b)))
    return out


def _capacities(members: list[np.ndarray]) -> tuple[int, int]:
    """How many distinct matched and mismatched pairs a set of groups can give."""
    sizes = np.array([len(m) for m in members], dtype=np.int64)
    matched = int((sizes * (sizes - 1) // 2).sum())
    mismatched = int((sizes.sum() ** 2 - (sizes**2).sum()) // 2)
    return matched, mismatched


def _assign_groups(sizes: np.ndarray, n_folds: int, rng: np.random.Generator) -> np.ndarray:
    """Fold of each group: largest groups first, each to the fold with the fewest samples.

    Balances the samples (and so the pair capacity) per fold; ties are broken by a shuffled
    order and then by the lowest fold number, so the assignment depends only on the seed.
    """
    shuffled = rng.permutation(len(sizes))
    order = shuffled[np.argsort(-sizes[shuffled], kind="stable")]
    load = np.zeros(n_folds, dtype=np.int64)
    fold_of = np.empty(len(sizes), dtype=np.int64)
    for g in order:
        f = int(np.argmin(load))
        fold_of[g] = f
        load[f] += sizes[g]
    return fold_of


def generate_pairs(
    groups: Sequence[int] | np.ndarray,
    n_folds: int = 10,
    pairs_per_fold: int = 300,
    seed: int = 0,
) -> PairList[int]:
    """Deterministic verification pairs among samples labelled by group (sample indices).

    As in LFW, each fold has ``pairs_per_fold`` matched *and* ``pairs_per_fold`` mismatched
    pairs (so ``2 * pairs_per_fold`` in all), listed matched first, with ``a < b``; no pair
    appears twice. Within a fold, matched pairs are spread over as many groups as possible
    before any group gives a second pair, and mismatched pairs over as many group pairs.

    **Group-disjoint folds** (the default outcome): groups are dealt to folds (largest first,
    each to the fold with the fewest samples), so a threshold is always tuned on other
    groups than those it is tested on. If some fold then has fewer than ``pairs_per_fold``
    possible matched or mismatched pairs, *every* fold gets that smaller number (warning), so
    folds stay balanced.

    **Shared groups** (fallback): when disjoint folds cannot give each fold at least one pair
    of each kind — fewer than ``2 * n_folds`` groups, or too few groups with two samples — all
    groups are pooled, the pairs are drawn from the pool and dealt out to the folds, with a
    warning: folds then share groups, which makes the tuned thresholds slightly optimistic.
    Pairs per fold are reduced here too if the pool is too small. A :class:`mtkd.DataError`
    is raised only when fewer than ``n_folds`` matched or mismatched pairs exist at all.

    The result depends only on ``groups`` (in order), ``n_folds``, ``pairs_per_fold`` and
    ``seed``.
    """
    if n_folds < 2:
        raise ValueError(f"n_folds must be at least 2 (one to test, others to tune), got {n_folds}")
    if pairs_per_fold < 1:
        raise ValueError(f"pairs_per_fold must be at least 1, got {pairs_per_fold}")
    labels = np.asarray(groups)
    if labels.ndim != 1:
        raise ValueError(f"groups must be one id per sample, got shape {labels.shape}")
    rng = np.random.default_rng(seed)
    members = _group_members(labels)
    fold_of = _assign_groups(np.array([len(m) for m in members], dtype=np.int64), n_folds, rng)
    per_fold = [[members[g] for g in np.flatnonzero(fold_of == f)] for f in range(n_folds)]
    n_disjoint = min(pairs_per_fold, *(min(_capacities(ms)) for ms in per_fold))
    if n_disjoint >= 1:
        if n_disjoint < pairs_per_fold:
            warnings.warn(
                f"generate_pairs: with group-disjoint folds the smallest fold can give only "
                f"{n_disjoint} matched and mismatched pairs; using {n_disjoint} of each per fold "
                f"instead of {pairs_per_fold}",
                stacklevel=2,
            )
        pairs: PairList[int] = []
        for f, ms in enumerate(per_fold):
            pairs += [Pair(a, b, True, f) for a, b in _matched(ms, n_disjoint, rng)]
            pairs += [Pair(a, b, False, f) for a, b in _mismatched(ms, n_disjoint, rng)]
        return pairs
    return _shared_group_pairs(members, len(labels), n_folds, pairs_per_fold, rng)


def _group_members(labels: np.ndarray) -> list[np.ndarray]:
    """Sample indices of each group (groups in sorted order, indices ascending within)."""
    ids, inverse = np.unique(labels, return_inverse=True)
    by_group = np.argsort(inverse, kind="stable")
    return np.split(by_group, np.cumsum(np.bincount(inverse, minlength=len(ids)))[:-1])


def _shared_group_pairs(
    members: list[np.ndarray],
    n_samples: int,
    n_folds: int,
    pairs_per_fold: int,
    rng: np.random.Generator,
) -> PairList[int]:
    """The fallback: pairs drawn from all groups pooled, dealt out to the folds."""
    matched_cap, mismatched_cap = _capacities(members)
    n_shared = min(pairs_per_fold, matched_cap // n_folds, mismatched_cap // n_folds)
    if n_shared < 1:
        raise DataError(
            f"cannot make {n_folds} verification folds from {len(members)} group(s) of "
            f"{n_samples} sample(s): {matched_cap} matched and {mismatched_cap} mismatched "
            f"pairs are possible, at least {n_folds} of each are needed"
        )
    warnings.warn(
        f"generate_pairs: {len(members)} group(s) cannot fill {n_folds} group-disjoint folds; "
        f"the folds share groups ({n_shared} matched and mismatched pairs per fold)",
        stacklevel=3,
    )
    matched = _matched(members, n_shared * n_folds, rng)
    mismatched = _mismatched(members, n_shared * n_folds, rng)
    m_order, x_order = rng.permutation(len(matched)), rng.permutation(len(mismatched))
    pairs: PairList[int] = []
    for f in range(n_folds):
        take = slice(f * n_shared, (f + 1) * n_shared)
        pairs += [Pair(matched[i][0], matched[i][1], True, f) for i in m_order[take]]
        pairs += [Pair(mismatched[i][0], mismatched[i][1], False, f) for i in x_order[take]]
    return pairs
