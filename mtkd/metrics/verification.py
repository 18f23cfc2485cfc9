"""Pair verification, LFW protocol: k-fold threshold selection over pair distances.

A verification benchmark is a list of pairs of samples, each marked *same group* (matched) or
not (mismatched), and split into folds. For each fold, the distance threshold that best
separates matched from mismatched pairs on the *other* folds is applied to the held-out fold;
the score is the mean ± std of the per-fold accuracies (the LFW "unrestricted" view-2 protocol,
``vis-www.cs.umass.edu/lfw/README.txt``, as implemented by InsightFace's
``recognition/arcface_torch/eval/verification.py``).

The pieces, in the order a caller uses them:

- pairs: :func:`read_lfw_pairs` (an LFW-format ``pairs.txt``) or :func:`generate_pairs`
  (deterministic pairs from per-sample group ids, for data sets without a pairs file);
  :func:`index_pairs` maps keys to sample indices, :func:`pair_labels` gives the arrays;
- embeddings: :func:`mtkd.model.embedding.embed_with_flip` (image + horizontal flip, summed,
  L2-normalised);
- :func:`pair_distances`, then :func:`verification_accuracy`.

Nothing here knows what the samples are: groups are any integer ids, keys any hashable.
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

import numpy as np

from ..errors import DataError
from ..model.embedding import l2_normalize

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


# --------------------------------------------------------------------------- pairs files


def _parse_count(token: str, path: Path, line_no: int, what: str) -> int:
    try:
        value = int(token)
    except ValueError:
        raise DataError(f"{path}:{line_no}: {what} must be an integer, got '{token}'") from None
    if value < 1:
        raise DataError(f"{path}:{line_no}: {what} must be at least 1, got {value}")
    return value


def read_lfw_pairs(path: str | Path) -> PairList[NamedKey]:
    """Read an LFW-format ``pairs.txt``.

    The first line is ``<folds> <pairs per fold>`` (view 2: ``10 300``) or a single
    ``<pairs>`` (view 1's ``pairsDevTrain.txt``: ``1100``, read as one fold). Each fold is then
    ``N`` matched lines ``name n1 n2`` followed by ``N`` mismatched lines
    ``name1 n1 name2 n2``; fields are separated by any whitespace and blank lines are skipped.
    Folds are numbered from 0 in file order. Any deviation (wrong field count for the block,
    a non-integer or non-positive image number, a mismatched pair naming one group twice,
    too few or too many lines) raises :class:`mtkd.DataError` naming the file and line.
    """
    path = Path(path)
    lines = _nonblank_lines(path)
    header_no, header = lines[0]
    n_folds, per_fold = _pairs_header(header, path, header_no)
    body = _pair_lines(lines[1:], n_folds * 2 * per_fold, n_folds, per_fold, path, header_no)
    pairs: PairList[NamedKey] = []
    for i, (no, fields) in enumerate(body):
        fold, within = divmod(i, 2 * per_fold)
        if within < per_fold:
            a, b = _matched_pair(fields, path, no, f"pair {within + 1} of fold {fold + 1}")
        else:
            where = f"pair {within - per_fold + 1} of fold {fold + 1}"
            a, b = _mismatched_pair(fields, path, no, where)
        pairs.append(Pair(a, b, within < per_fold, fold))
    return pairs


Line = tuple[int, list[str]]


def _nonblank_lines(path: Path) -> list[Line]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"{path}: cannot read the pairs file ({exc.strerror or exc})") from None
    lines = [(no, line.split()) for no, line in enumerate(text.splitlines(), start=1)]
    lines = [(no, fields) for no, fields in lines if fields]
    if not lines:
        raise DataError(f"{path}: the pairs file is empty")
    return lines


def _pairs_header(header: list[str], path: Path, no: int) -> tuple[int, int]:
    """(folds, pairs per fold) from ``<folds> <pairs per fold>`` or ``<pairs>``."""
    if len(header) == 2:
        n_folds = _parse_count(header[0], path, no, "the number of folds")
        return n_folds, _parse_count(header[1], path, no, "the number of pairs per fold")
    if len(header) == 1:
        return 1, _parse_count(header[0], path, no, "the number of pairs")
    raise DataError(
        f"{path}:{no}: the header must be '<folds> <pairs per fold>' or '<pairs>', "
        f"got {len(header)} fields"
    )


def _pair_lines(
    body: list[Line], expected: int, n_folds: int, per_fold: int, path: Path, header_no: int
) -> list[Line]:
    """The body, which must hold exactly the lines the header promises."""
    if len(body) < expected:
        last = body[-1][0] if body else header_no
        raise DataError(
            f"{path}:{last}: the header promises {n_folds} fold(s) of {per_fold} matched and "
            f"{per_fold} mismatched pairs ({expected} lines), but the file ends after "
            f"{len(body)}"
        )
    if len(body) > expected:
        raise DataError(
            f"{path}:{body[expected][0]}: unexpected line after the {expected} pair lines "
            f"the header promises"
        )
    return body


def _matched_pair(fields: list[str], path: Path, no: int, where: str) -> tuple[NamedKey, NamedKey]:
    if len(fields) != 3:
        raise DataError(
            f"{path}:{no}: expected a matched pair 'name n1 n2' ({where}), got {len(fields)} fields"
        )
    name, n1, n2 = fields
    return (
        (name, _parse_count(n1, path, no, "an image number")),
        (name, _parse_count(n2, path, no, "an image number")),
    )


def _mismatched_pair(
    fields: list[str], path: Path, no: int, where: str
) -> tuple[NamedKey, NamedKey]:
    if len(fields) != 4:
        raise DataError(
            f"{path}:{no}: expected a mismatched pair 'name1 n1 name2 n2' ({where}), "
            f"got {len(fields)} fields"
        )
    name1, n1, name2, n2 = fields
    if name1 == name2:
        raise DataError(f"{path}:{no}: a mismatched pair names '{name1}' twice")
    return (
        (name1, _parse_count(n1, path, no, "an image number")),
        (name2, _parse_count(n2, path, no, "an image number")),
    )


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
    """``(same, folds)`` arrays (bool, int64) in pair order, for :func:`verification_accuracy`."""
    same = np.fromiter((p.same for p in pairs), dtype=bool, count=len(pairs))
    folds = np.fromiter((p.fold for p in pairs), dtype=np.int64, count=len(pairs))
    return same, folds


# --------------------------------------------------------------------------- generated pairs


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


# --------------------------------------------------------------------------- embeddings


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


# --------------------------------------------------------------------------- the protocol


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
