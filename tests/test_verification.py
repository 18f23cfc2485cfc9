"""LFW-protocol verification: pairs files, generated pairs, distances and fold thresholds."""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

import mtkd
from mtkd.metrics.lfw_pairs import read_lfw_pairs
from mtkd.metrics.pair_generation import generate_pairs
from mtkd.metrics.pairs import Pair, index_pairs, pair_labels
from mtkd.metrics.verification import (
    best_threshold,
    candidate_thresholds,
    pair_distances,
    verification_accuracy,
)
from mtkd.model.embedding import embed_with_flip

# --------------------------------------------------------------------------- the protocol

# Three folds of 2 matched (s) + 2 mismatched (d) pairs; "same" when distance < threshold.
HAND_D = [0.10, 0.40, 0.50, 0.90, 0.20, 0.60, 0.30, 0.80, 0.35, 0.45, 0.70, 1.00]
HAND_SAME = [True, True, False, False] * 3
HAND_FOLDS = [0] * 4 + [1] * 4 + [2] * 4


def test_verification_accuracy_matches_a_hand_computed_case() -> None:
    # Fold 0 held out. Tune on folds 1+2, sorted: .2s .3d .35s .45s .6s .7d .8d 1.0d.
    #   Correct of 8 at each candidate: .2→4 .25→5 .325→4 .4→5 .525→6 .65→7 .75→6 .9→5
    #   above 1.0→4. Best 0.65 (7/8). On fold 0: .1s✓ .4s✓ .5d✗(called same) .9d✓ → 3/4.
    # Fold 1 held out. Tune on folds 0+2: .1s .35s .4s .45s | .5d .7d .9d 1.0d separate
    #   perfectly at the midpoint 0.475. On fold 1: .2s✓ .6s✗ .3d✗ .8d✓ → 2/4.
    # Fold 2 held out. Tune on folds 0+1, sorted: .1s .2s .3d .4s .5d .6s .8d .9d.
    #   Correct of 8: .1→4 .15→5 .25→6 .35→5 .45→6 .55→5 .7→6 .85→5 .9→4 above→4.
    #   A three-way tie at 6/8 (0.25, 0.45, 0.7): the smallest, 0.25, wins (InsightFace's
    #   argmax over an ascending grid). On fold 2: .35s✗ .45s✗ .7d✓ 1.0d✓ → 2/4.
    # Mean (0.75 + 0.5 + 0.5) / 3 = 7/12; population std sqrt(((1/6)² + 2 (1/12)²) / 3)
    #   = sqrt(1/72).
    result = verification_accuracy(np.array(HAND_D), np.array(HAND_SAME), np.array(HAND_FOLDS))
    assert result.folds == (0, 1, 2)
    assert result.accuracies == (0.75, 0.5, 0.5)
    assert result.thresholds == pytest.approx((0.65, 0.475, 0.25))
    assert result.mean == pytest.approx(7 / 12)
    assert result.std == pytest.approx(np.sqrt(1 / 72))
    assert result.n_pairs == 12
    d = result.to_dict()
    assert d["accuracy_mean"] == result.mean
    assert d["fold_accuracies"] == [0.75, 0.5, 0.5]
    assert d["fold_thresholds"] == list(result.thresholds)


def test_fold_labels_may_be_any_integers_and_pairs_any_order() -> None:
    order = np.random.default_rng(0).permutation(12)
    labels = np.array([7, 3, 11])[np.array(HAND_FOLDS)]
    result = verification_accuracy(
        np.array(HAND_D)[order], np.array(HAND_SAME)[order], labels[order]
    )
    assert result.folds == (3, 7, 11)
    assert result.accuracies == (0.5, 0.75, 0.5)  # folds 1, 0, 2 of the hand case


def test_candidates_are_midpoints_plus_ends() -> None:
    c = candidate_thresholds(np.array([0.3, 0.1, 0.3, 0.2]))
    assert c[0] == 0.1 and c[-1] > 0.3 and c[-1] == np.nextafter(0.3, 1)
    assert c[1:-1] == pytest.approx([0.15, 0.25])


def test_best_threshold_can_call_everything_same_or_different() -> None:
    d = np.array([0.1, 0.2, 0.3])
    t, acc = best_threshold(d, np.array([True, True, True]))
    assert (d < t).all() and acc == 1.0
    t, acc = best_threshold(d, np.array([False, False, False]))
    assert not (d < t).any() and acc == 1.0


def _brute_force(d: np.ndarray, same: np.ndarray, folds: np.ndarray) -> list[float]:
    """The protocol written as plainly as possible, to check the vectorised version."""
    out = []
    for k in np.unique(folds):
        train, test = folds != k, folds == k
        u = np.unique(d[train])
        candidates = [u[0], *((u[:-1] + u[1:]) / 2), np.nextafter(u[-1], np.inf)]
        scores = [np.mean((d[train] < t) == same[train]) for t in candidates]
        t = candidates[int(np.argmax(scores))]
        out.append(float(np.mean((d[test] < t) == same[test])))
    return out


def test_verification_accuracy_agrees_with_a_brute_force_reference() -> None:
    rng = np.random.default_rng(3)
    same = rng.random(400) < 0.5
    d = np.round(np.where(same, rng.normal(0.8, 0.3, 400), rng.normal(1.4, 0.3, 400)), 2)
    folds = np.repeat(np.arange(10), 40)
    result = verification_accuracy(d, same, folds)
    assert list(result.accuracies) == _brute_force(d, same, folds)
    assert 0.75 < result.mean < 0.95


@pytest.mark.parametrize(
    ("d", "same", "folds", "message"),
    [
        ([0.1, 0.2], [True, False], [0, 0], "two folds"),
        ([0.1, 0.2], [True], [0, 1], "equally long"),
        ([0.1, np.nan], [True, False], [0, 1], "not finite"),
        ([0.1, 0.2], [2, 0], [0, 1], "boolean"),
    ],
)
def test_verification_accuracy_rejects_bad_input(
    d: list[float], same: list[object], folds: list[int], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        verification_accuracy(np.array(d), np.array(same), np.array(folds))


# --------------------------------------------------------------------------- pairs files

PAIRS_BODY = """\
Alice\t1\t2
Bob\t1\t3
Alice\t1\tBob\t2
Carol\t2\tDan\t1
Carol\t1\t2
Dan\t1\t2
Alice 2 Carol 1
Bob   3   Dan 2
"""


def test_read_lfw_pairs_with_folds_and_pairs_per_fold(tmp_path: Path) -> None:
    path = tmp_path / "pairs.txt"
    path.write_text("2\t2\n" + PAIRS_BODY)
    pairs = read_lfw_pairs(path)
    assert len(pairs) == 8
    assert pairs[0] == Pair(("Alice", 1), ("Alice", 2), True, 0)
    assert pairs[2] == Pair(("Alice", 1), ("Bob", 2), False, 0)
    assert pairs[4] == Pair(("Carol", 1), ("Carol", 2), True, 1)
    assert pairs[7] == Pair(("Bob", 3), ("Dan", 2), False, 1)
    same, folds = pair_labels(pairs)
    assert same.tolist() == [True, True, False, False] * 2
    assert folds.tolist() == [0] * 4 + [1] * 4


def test_read_lfw_pairs_with_a_single_count_is_one_fold(tmp_path: Path) -> None:
    path = tmp_path / "pairsDevTrain.txt"
    matched = "Alice 1 2\nBob 1 3\nCarol 1 2\nDan 1 2\n"
    mismatched = "Alice 1 Bob 2\nCarol 2 Dan 1\nAlice 2 Carol 1\nBob 3 Dan 2\n"
    path.write_text("4\n" + matched + mismatched + "\n")  # a trailing blank line is fine
    pairs = read_lfw_pairs(path)
    assert [p.same for p in pairs] == [True] * 4 + [False] * 4
    assert {p.fold for p in pairs} == {0}


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("2 2\n" + PAIRS_BODY.replace("Bob\t1\t3", "Bob\t1\t3\t4", 1), 3, "matched pair"),
        ("2 2\n" + PAIRS_BODY.replace("Alice\t1\tBob\t2", "Alice\t1\t2", 1), 4, "mismatched"),
        ("2 2\n" + PAIRS_BODY.replace("Bob\t1\t3", "Bob\t1\tthree", 1), 3, "'three'"),
        ("2 2\n" + PAIRS_BODY.replace("Bob\t1\t3", "Bob\t0\t3", 1), 3, "at least 1"),
        ("2 2\n" + PAIRS_BODY.replace("Carol\t2\tDan", "Carol\t2\tCarol", 1), 5, "twice"),
        ("2 x\n" + PAIRS_BODY, 1, "pairs per fold"),
        ("2 2 2\n" + PAIRS_BODY, 1, "header"),
        ("3 2\n" + PAIRS_BODY, 9, "ends after 8"),
        ("1 2\n" + PAIRS_BODY, 6, "unexpected line"),
    ],
)
def test_malformed_pairs_files_name_the_file_and_line(
    tmp_path: Path, text: str, line: int, message: str
) -> None:
    path = tmp_path / "pairs.txt"
    path.write_text(text)
    with pytest.raises(mtkd.DataError, match=message) as info:
        read_lfw_pairs(path)
    assert f"{path}:{line}:" in str(info.value)


def test_empty_or_missing_pairs_file(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(mtkd.DataError, match="empty"):
        read_lfw_pairs(tmp_path / "empty.txt")
    with pytest.raises(mtkd.DataError, match="cannot read"):
        read_lfw_pairs(tmp_path / "absent.txt")


def test_index_pairs_maps_keys_and_reports_missing_ones() -> None:
    pairs = [Pair(("A", 1), ("A", 2), True, 0), Pair(("A", 1), ("B", 1), False, 0)]
    index = {("A", 1): 0, ("A", 2): 1, ("B", 1): 5}
    assert index_pairs(pairs, index) == [Pair(0, 1, True, 0), Pair(0, 5, False, 0)]
    with pytest.raises(mtkd.DataError, match=r"pairs.txt: 1 sample\(s\).*'B', 1"):
        index_pairs(pairs, {("A", 1): 0, ("A", 2): 1}, source="pairs.txt")


# --------------------------------------------------------------------------- generated pairs


def _check_pairs(pairs: list[Pair[int]], groups: np.ndarray, n_folds: int, per_fold: int) -> None:
    kinds = Counter((p.fold, p.same) for p in pairs)
    assert kinds == {(f, s): per_fold for f in range(n_folds) for s in (True, False)}
    for p in pairs:
        assert p.a < p.b
        assert (groups[p.a] == groups[p.b]) == p.same
    assert len({(p.a, p.b) for p in pairs}) == len(pairs)  # no pair twice


def test_generate_pairs_is_deterministic_balanced_and_group_disjoint() -> None:
    rng = np.random.default_rng(0)
    groups = rng.permutation(np.repeat(rng.permutation(40) * 7, rng.integers(2, 12, 40)))
    pairs = generate_pairs(groups, n_folds=5, pairs_per_fold=20, seed=1)
    _check_pairs(pairs, groups, 5, 20)
    assert pairs == generate_pairs(groups, n_folds=5, pairs_per_fold=20, seed=1)
    assert pairs != generate_pairs(groups, n_folds=5, pairs_per_fold=20, seed=2)
    groups_of_fold = [
        {int(groups[i]) for p in pairs if p.fold == f for i in (p.a, p.b)} for f in range(5)
    ]
    for f in range(5):
        for g in range(f + 1, 5):
            assert not groups_of_fold[f] & groups_of_fold[g]
    # Matched pairs spread over groups: 8 groups per fold, 20 pairs → at most 3 per group.
    per_group = Counter((p.fold, int(groups[p.a])) for p in pairs if p.same)
    assert max(per_group.values()) <= 3


def test_generate_pairs_shrinks_every_fold_to_the_smallest_capacity() -> None:
    groups = np.repeat(np.arange(30), 3)  # 10 folds of 3 groups: 9 matched pairs per fold
    with pytest.warns(UserWarning, match="only 9"):
        pairs = generate_pairs(groups, n_folds=10, pairs_per_fold=300)
    _check_pairs(pairs, groups, 10, 9)


def test_generate_pairs_shares_groups_when_there_are_too_few() -> None:
    groups = np.repeat(np.arange(6), 4)  # 6 groups cannot give 10 folds two groups each
    with pytest.warns(UserWarning, match="share groups"):
        pairs = generate_pairs(groups, n_folds=10, pairs_per_fold=5)
    _check_pairs(pairs, groups, 10, 3)  # 36 matched pairs exist: 3 per fold
    with pytest.raises(mtkd.DataError, match="cannot make 10 verification folds"):
        generate_pairs(np.arange(30), n_folds=10)  # singletons: no matched pair at all


def test_generate_pairs_is_quiet_when_it_can_deliver() -> None:
    groups = np.repeat(np.arange(20), 30)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pairs = generate_pairs(groups, n_folds=10, pairs_per_fold=50)
    _check_pairs(pairs, groups, 10, 50)


# --------------------------------------------------------------------------- embeddings


def test_pair_distances_on_normalised_embeddings() -> None:
    emb = np.array([[3.0, 0.0], [0.0, 2.0], [-1.0, 0.0], [1.0, 1.0]])
    pairs = [Pair(0, 1, False, 0), Pair(0, 2, False, 0), Pair(0, 3, True, 0)]
    sq = pair_distances(emb, pairs)
    assert sq == pytest.approx([2.0, 4.0, 2 - np.sqrt(2)])  # ||u-v||² = 2 - 2 cos
    cos = pair_distances(emb, np.array([[0, 1], [0, 2], [0, 3]]), metric="cosine")
    assert cos == pytest.approx(sq / 2)
    with pytest.raises(ValueError, match="pair indices"):
        pair_distances(emb, [Pair(0, 4, True, 0)])


def test_embed_with_flip_sums_image_and_mirror_then_normalises() -> None:
    images = torch.arange(2 * 1 * 2 * 3, dtype=torch.float32).reshape(2, 1, 2, 3)

    def first_row(x: torch.Tensor) -> torch.Tensor:  # a "model" whose embedding is row 0
        return x[:, 0, 0, :]

    out = embed_with_flip(first_row, images, batch_size=1)
    row = images[:, 0, 0, :].numpy()
    expected = row + row[:, ::-1]
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert out.dtype == np.float32
    assert out == pytest.approx(expected)
    assert embed_with_flip(first_row, images) == pytest.approx(out)


def test_end_to_end_on_embeddings_clustered_by_group() -> None:
    rng = np.random.default_rng(5)
    groups = np.repeat(np.arange(40), 6)
    centres = rng.normal(size=(40, 16))
    embeddings = centres[groups] + 0.3 * rng.normal(size=(240, 16))
    pairs = generate_pairs(groups, n_folds=4, pairs_per_fold=30, seed=0)
    same, folds = pair_labels(pairs)
    result = verification_accuracy(pair_distances(embeddings, pairs), same, folds)
    assert result.n_pairs == 240 and len(result.accuracies) == 4
    assert result.mean > 0.95
    shuffled = pair_distances(rng.permutation(embeddings), pairs)  # embeddings unrelated
    assert verification_accuracy(shuffled, same, folds).mean < 0.75
