"""Deterministic train/validation/test splits, per group (e.g. per identity).

Per-group splitting is how the paper splits: of each person's views, a fraction is held out
for testing, and the rest is divided into training and validation.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SPLITS = ("train", "val", "test")
HOLDOUT = "holdout"


def _take(n: int, fraction: float, keep: int) -> int:
    """How many of n to hold out: rounded, at least one when fraction > 0, leaving ``keep``."""
    if fraction <= 0 or n <= keep:
        return 0
    return min(max(1, round(n * fraction)), n - keep)


def split_indices(
    groups: Sequence[int] | None,
    n: int,
    test: float,
    val: float,
    seed: int,
    holdout: float = 0.0,
) -> dict[str, np.ndarray]:
    """Indices per split; each group's samples are shuffled with ``seed`` and divided.

    With ``holdout`` > 0 that fraction of whole groups goes to the ``holdout`` split first
    (never trained, validated or tested on: verification on unseen groups).
    """
    if not 0 <= test < 1 or not 0 <= val < 1 or not 0 <= holdout < 1:
        raise ValueError(
            f"split fractions must be in [0, 1): test={test}, val={val}, holdout={holdout}"
        )
    members: dict[int, list[int]] = defaultdict(list)
    keys = groups if groups is not None else [0] * n
    for index, group in enumerate(keys):
        members[int(group)].append(index)
    ordered = sorted(members)
    n_held = _take(len(ordered), holdout, keep=1)
    held_rng = np.random.default_rng([seed, 7])  # its own stream: holdout leaves splits as is
    held = set(held_rng.permutation(ordered)[:n_held].tolist())
    out: dict[str, list[int]] = {name: [] for name in (*SPLITS, HOLDOUT)}
    for group in ordered:
        if group in held:
            out[HOLDOUT].extend(members[group])
            continue
        idx = np.array(members[group])
        # each group its own stream: one group's split never depends on which others exist
        np.random.default_rng([seed, group & 0xFFFFFFFF]).shuffle(idx)
        n_test = _take(len(idx), test, keep=1)
        rest = idx[n_test:]
        n_val = _take(len(rest), val, keep=1)
        out["test"].extend(idx[:n_test].tolist())
        out["val"].extend(rest[:n_val].tolist())
        out["train"].extend(rest[n_val:].tolist())
    return {name: np.array(sorted(v), dtype=np.int64) for name, v in out.items()}


def fixed_split_indices(labels: Sequence[str]) -> dict[str, np.ndarray]:
    """Indices per split from a data set's own ``train``/``val``/``test`` label per sample."""
    names = (*SPLITS, HOLDOUT)
    unknown = sorted(set(labels) - set(names))
    if unknown:
        raise ValueError(f"unknown split names {unknown}; expected {', '.join(names)}")
    return {
        name: np.array([i for i, s in enumerate(labels) if s == name], dtype=np.int64)
        for name in names
    }


def validation_from_train(
    parts: dict[str, np.ndarray], groups: Sequence[int] | None, val: float, seed: int
) -> dict[str, np.ndarray]:
    """A fixed split without validation samples, with ``val`` of each group's training samples
    moved to validation (as :func:`split_indices` takes it: at least one from a group of two
    or more, never a group's last training sample); splits that have validation stay as they
    are. Each group's choice is drawn from its own (seed, group) stream."""
    if len(parts["val"]) or val <= 0:
        return parts
    if not 0 < val < 1:
        raise ValueError(f"split fractions must be in [0, 1): val={val}")
    members: dict[int, list[int]] = defaultdict(list)
    for index in parts["train"].tolist():
        members[int(groups[index]) if groups is not None else 0].append(index)
    train: list[int] = []
    chosen: list[int] = []
    for group in sorted(members):
        idx = np.array(members[group])
        np.random.default_rng([seed, group & 0xFFFFFFFF, 1]).shuffle(idx)
        n_val = _take(len(idx), val, keep=1)
        chosen.extend(idx[:n_val].tolist())
        train.extend(idx[n_val:].tolist())
    out = dict(parts)
    out["train"] = np.array(sorted(train), dtype=np.int64)
    out["val"] = np.array(sorted(chosen), dtype=np.int64)
    return out


def groups_left_out(
    groups: Sequence[int] | None, before: np.ndarray, after: np.ndarray
) -> list[int]:
    """The groups that had samples in ``before`` but have none in ``after`` (sorted)."""
    if groups is None:
        return [] if len(after) or not len(before) else [0]
    had = {int(groups[i]) for i in before.tolist()}
    has = {int(groups[i]) for i in after.tolist()}
    return sorted(had - has)


@dataclass(frozen=True)
class SplitFilter:
    """What a label-range filter (``data.split.train_where``/``val_where``) did to one split."""

    split: str  # train or val
    key: str  # the recipe key the condition came from
    where: str  # the condition as written, e.g. {yaw: [-30, 30]}
    before: int
    kept: int
    unlabelled: int  # left out because they lack the label the condition reads

    @property
    def removed(self) -> int:
        return self.before - self.kept

    def line(self) -> str:
        outside = self.removed - self.unlabelled
        return (
            f"  {self.key} {self.where}: {self.kept} of {self.before} {self.split} samples kept "
            f"({outside} outside the range, {self.unlabelled} without the label)"
        )
