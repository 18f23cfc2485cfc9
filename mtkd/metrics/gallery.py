"""Gallery/probe identification: enrol each group from a few samples, identify the others.

The cross-pose protocol of face-recognition benchmarks: each person is enrolled from a few
views (the *gallery*, e.g. near-frontal: ``evaluate.gallery_where``), and every other view
(a *probe*) is identified as the person whose gallery template is nearest. A template is the
mean of the group's normalised gallery embeddings, normalised again; nearest means the
largest cosine similarity. Rank-1 per bin of a nuisance (yaw) shows where recognition
degrades away from the views a person was enrolled with.

Verification pairs are drawn gallery-to-probe: each probe against its own group's template
(matched) and against one other group's template (mismatched), in folds by group (a threshold
is tuned on other groups' pairs, as in the LFW protocol), so the accuracy of each probe's
pairs can be binned by the probe's yaw under one operating threshold.

Nothing here knows what the samples are: embeddings are rows, groups any integer ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..model.embedding import l2_normalize
from .pose import accuracy_by_bin
from .verification import verification_accuracy


@dataclass(frozen=True)
class Bins:
    """The ``evaluate.bin_*`` settings: bin width and range of the binned component."""

    width: float = 15.0
    low: float = -90.0
    high: float = 90.0


@dataclass(frozen=True)
class GalleryMatch:
    """The probes scored (rows of the embeddings), their true and nearest-template groups."""

    probes: np.ndarray  # row of each scored probe
    truth: np.ndarray
    predicted: np.ndarray
    templates: np.ndarray  # (groups enrolled, D), unit rows
    enrolled: np.ndarray  # the group of each template
    unenrolled_probes: int  # probes of groups with no gallery sample: not scored

    @property
    def correct(self) -> np.ndarray:
        return np.asarray(self.predicted == self.truth)


def templates(
    embeddings: np.ndarray, groups: np.ndarray, gallery: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(unit template per enrolled group, those groups ascending): the normalised mean of the
    group's normalised gallery embeddings."""
    unit = l2_normalize(np.asarray(embeddings, dtype=np.float64))
    groups, gallery = np.asarray(groups), np.asarray(gallery, dtype=bool)
    enrolled = np.unique(groups[gallery])
    if not len(enrolled):
        return np.zeros((0, unit.shape[1] if unit.ndim == 2 else 0)), enrolled
    means = np.stack([unit[gallery & (groups == g)].mean(axis=0) for g in enrolled])
    return l2_normalize(means), enrolled


def identify(embeddings: np.ndarray, groups: np.ndarray, gallery: np.ndarray) -> GalleryMatch:
    """Each probe (a sample outside the gallery) given the group of its nearest template.

    Probes of a group without any gallery sample cannot be identified correctly by anyone;
    they are counted (``unenrolled_probes``) and left out rather than scored as errors.
    """
    groups, gallery = np.asarray(groups), np.asarray(gallery, dtype=bool)
    if len(groups) != len(gallery) or len(groups) != len(embeddings):
        raise ValueError(
            f"embeddings, groups and gallery must be equally long, got "
            f"{len(embeddings)}, {len(groups)}, {len(gallery)}"
        )
    found, enrolled = templates(embeddings, groups, gallery)
    candidates = np.flatnonzero(~gallery)
    probes = candidates[np.isin(groups[candidates], enrolled)]
    unit = l2_normalize(np.asarray(embeddings, dtype=np.float64))
    similarity = unit[probes] @ found.T if len(enrolled) else np.zeros((len(probes), 0))
    predicted = enrolled[similarity.argmax(axis=1)] if len(enrolled) else groups[probes]
    return GalleryMatch(
        probes=probes,
        truth=groups[probes],
        predicted=predicted,
        templates=found,
        enrolled=enrolled,
        unenrolled_probes=len(candidates) - len(probes),
    )


def probe_pairs(
    match: GalleryMatch, embeddings: np.ndarray, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(distance, same, probe position) per pair: each probe with its own template and with one
    other group's template (drawn with ``seed``); squared L2 between unit vectors."""
    rng = np.random.default_rng([seed, 18])
    unit = l2_normalize(np.asarray(embeddings, dtype=np.float64))[match.probes]
    own = np.searchsorted(match.enrolled, match.truth)
    other = (own + rng.integers(1, len(match.enrolled), size=len(own))) % len(match.enrolled)
    positions = np.arange(len(own))
    distance = np.concatenate(
        [
            np.sum((unit - match.templates[own]) ** 2, axis=1),
            np.sum((unit - match.templates[other]) ** 2, axis=1),
        ]
    )
    same = np.concatenate([np.ones(len(own), bool), np.zeros(len(own), bool)])
    return distance, same, np.concatenate([positions, positions])


def group_folds(groups: np.ndarray, n_folds: int, seed: int = 0) -> np.ndarray:
    """A fold per sample, by group: groups shuffled with ``seed`` and dealt round robin."""
    ids = np.unique(groups)
    order = np.random.default_rng([seed, 19]).permutation(len(ids))
    fold_of = dict(zip(ids[order].tolist(), (np.arange(len(ids)) % n_folds).tolist(), strict=True))
    return np.array([fold_of[g] for g in np.asarray(groups).tolist()], dtype=np.int64)


def pair_verification(
    match: GalleryMatch, embeddings: np.ndarray, n_folds: int, seed: int = 0
) -> tuple[dict[str, Any], np.ndarray, np.ndarray] | None:
    """Gallery-to-probe verification: the k-fold result, and per pair whether its fold's
    threshold classified it correctly and which probe it belongs to. None with fewer than two
    enrolled groups (no mismatched template) or two folds."""
    folds_used = min(n_folds, len(np.unique(match.truth)))
    if len(match.enrolled) < 2 or folds_used < 2:
        return None
    distance, same, position = probe_pairs(match, embeddings, seed)
    folds = group_folds(match.truth, folds_used, seed)[position]
    result = verification_accuracy(distance, same, folds)
    threshold = dict(zip(result.folds, result.thresholds, strict=True))
    cut = np.array([threshold[int(f)] for f in folds])
    return result.to_dict(), (distance < cut) == same, position


def _binned(correct: np.ndarray, values: np.ndarray, bins: Bins) -> list[dict[str, Any]]:
    known = ~np.isnan(values)
    found = accuracy_by_bin(correct[known], values[known], bins.width, bins.low, bins.high)
    return [b.to_dict() for b in found]


def _mean(values: np.ndarray) -> float | None:
    return float(np.mean(values)) if len(values) else None


def gallery_section(
    embeddings: np.ndarray,
    groups: np.ndarray,
    gallery: np.ndarray,
    classifier_correct: np.ndarray | None = None,
    values: np.ndarray | None = None,
    bins: Bins | None = None,
    n_folds: int = 10,
    seed: int = 0,
) -> dict[str, Any]:
    """What ``results.json`` reports for one task: rank-1 overall and per bin of ``values``
    (NaN: not binned), the classifier's accuracy on the same probes beside it, and
    gallery-to-probe verification overall and per bin."""
    match = identify(embeddings, groups, gallery)
    out: dict[str, Any] = {
        "gallery_samples": int(np.sum(gallery)),
        "groups_enrolled": len(match.enrolled),
        "groups_without_gallery": len(np.unique(groups)) - len(match.enrolled),
        "probes": len(match.probes),
        "probes_not_enrolled": match.unenrolled_probes,
        "rank1": _mean(match.correct),
    }
    hit = None if classifier_correct is None else np.asarray(classifier_correct)[match.probes]
    if hit is not None:
        out["classifier_top1"] = _mean(hit)
    verified = pair_verification(match, embeddings, n_folds, seed)
    if verified is not None:
        out["verification"] = verified[0]
    if values is None or not len(match.probes):
        return out
    bins, probe_values = bins or Bins(), np.asarray(values, dtype=np.float64)[match.probes]
    out["rank1_by_bin"] = _binned(match.correct, probe_values, bins)
    if hit is not None:
        out["classifier_by_bin"] = _binned(hit, probe_values, bins)
    if verified is not None:
        out["verification_by_bin"] = _binned(verified[1], probe_values[verified[2]], bins)
    return out
