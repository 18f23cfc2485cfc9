"""Plots: each writes a PNG Pillow can open, and the numbers behind the summaries are right."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image

from mtkd.errors import MtkdError
from mtkd.viz.plots import (
    _val_metrics,
    class_colours,
    mean_by_bin,
    most_confused,
    plot_accuracy_by_bin,
    plot_confusion_summary,
    plot_prediction_sheet,
    plot_training_curves,
    worst_classes,
)


@pytest.fixture(autouse=True)
def no_figure_left_open() -> Any:
    """Every plot function must close its figure: long sessions would otherwise grow."""
    yield
    assert plt.get_fignums() == []


def assert_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert min(image.size) >= 200


# --- training curves -------------------------------------------------------------------------


def write_metrics(run: Path, rows: list[dict[str, Any]]) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def epoch(n: int, best: bool) -> dict[str, Any]:
    return {
        "epoch": n,
        "lr": 1e-3,
        "train/loss": 2.0 / n,
        "train/identification/loss": 1.5 / n,
        "train/segmentation/loss": 1.0 / n,
        "val/loss": 2.2 / n,
        "val/identification/loss": 1.6 / n,
        "val/identification/count": 12,
        "val/identification/top1": 0.2 * n,
        "val/segmentation/loss": 1.1 / n,
        "val/segmentation/iou": [0.1 * n, 0.0, 0.3],  # list-valued: not a curve
        "val/segmentation/miou": 0.1 * n,
        "time_s": 1.0,
        "best": best,
    }


def test_training_curves_with_validation_metrics(tmp_path: Path) -> None:
    rows = [epoch(1, True), epoch(2, True), epoch(3, False)]
    write_metrics(tmp_path / "run", rows)
    assert _val_metrics(rows, "segmentation") == ["miou"]  # the iou list and count skipped
    assert _val_metrics(rows, "identification") == ["top1"]
    out = plot_training_curves(tmp_path / "run")
    assert out == tmp_path / "run" / "curves.png"
    assert_png(out)


def test_training_curves_without_validation(tmp_path: Path) -> None:
    rows = [
        {"epoch": n, "train/loss": 1.0 / n, "train/identification/loss": 1.0 / n} for n in (1, 2)
    ]
    write_metrics(tmp_path / "run", rows)
    assert_png(plot_training_curves(tmp_path / "run"))


def test_training_curves_need_a_run_folder(tmp_path: Path) -> None:
    with pytest.raises(MtkdError, match=r"metrics\.jsonl"):
        plot_training_curves(tmp_path)


# --- accuracy by bin -------------------------------------------------------------------------


def result(recipe: str, seed: int, accuracies: list[float | None], **info: Any) -> dict[str, Any]:
    """A results.json with ``accuracy_by_bin`` over yaw bins [-90, -30), [-30, 30), [30, 90)."""
    edges = [-90.0, -30.0, 30.0, 90.0]
    bins = [
        {"low": lo, "high": hi, "count": 0 if a is None else 10, "accuracy": a}
        for lo, hi, a in zip(edges[:-1], edges[1:], accuracies, strict=True)
    ]
    bins.append({"low": 90.0, "high": None, "count": 3, "accuracy": 1.0})  # out of range
    by_bin = {"label": "pose", "component": "yaw", "tasks": {"identification": bins}}
    return {"recipe": recipe, "seed": seed, "accuracy_by_bin": by_bin | info}


RUNS = [
    result("a", 0, [0.2, 0.8, None]),
    result("a", 1, [0.4, 0.6, 0.5]),
    result("b", 0, [0.1, 0.9, 0.3]),
    {"recipe": "c", "seed": 0},  # an older run without the entry
]


def test_mean_by_bin_averages_seeds_per_recipe_and_skips_empty_bins() -> None:
    means = mean_by_bin(RUNS, "identification")
    assert list(means) == ["a", "b"]
    a = means["a"]
    assert [b.centre for b in a] == [-60.0, 0.0, 60.0]  # the open-ended bin has no centre
    assert [b.mean for b in a] == pytest.approx([0.3, 0.7, 0.5])
    assert [(b.min, b.max) for b in a] == [(0.2, 0.4), (0.6, 0.8), (0.5, 0.5)]
    assert [b.seeds for b in a] == [2, 2, 1]  # seed 0 had nobody in the last bin
    assert [b.mean for b in means["b"]] == pytest.approx([0.1, 0.9, 0.3])
    assert mean_by_bin(RUNS, "segmentation") == {}


def test_plot_accuracy_by_bin(tmp_path: Path) -> None:
    assert_png(plot_accuracy_by_bin(RUNS, tmp_path / "by_bin.png"))


def test_plot_accuracy_by_bin_refuses_nothing_or_mixed_quantities(tmp_path: Path) -> None:
    with pytest.raises(MtkdError, match="no run"):
        plot_accuracy_by_bin(RUNS, tmp_path / "x.png", task="segmentation")
    mixed = [*RUNS, result("d", 0, [0.1, 0.2, 0.3], component="pitch")]
    with pytest.raises(MtkdError, match="different quantities"):
        plot_accuracy_by_bin(mixed, tmp_path / "x.png")


def test_gallery_rank1_by_bin_is_read_and_drawn_beside_the_classifier(tmp_path: Path) -> None:
    with_gallery = result("g", 0, [0.5, 0.9, 0.4])
    rank1 = [
        dict(b, accuracy=0.1) for b in with_gallery["accuracy_by_bin"]["tasks"]["identification"]
    ]
    with_gallery["gallery"] = {"tasks": {"identification": {"rank1_by_bin": rank1}}}
    runs = [*RUNS, with_gallery]
    assert list(mean_by_bin(runs, "identification", "gallery")) == ["g"]
    assert [b.mean for b in mean_by_bin(runs, "identification", "gallery")["g"]] == [0.1] * 3
    assert list(mean_by_bin(runs, "identification")) == ["a", "b", "g"]  # classifier as before
    assert_png(plot_accuracy_by_bin(runs, tmp_path / "both.png"))


# --- prediction sheet ------------------------------------------------------------------------


def test_class_colours_background_black_and_distinct() -> None:
    colours = class_colours(21)
    assert colours.shape == (22, 3)  # one extra row for out-of-range indices
    assert colours[0].tolist() == [0.0, 0.0, 0.0]
    assert len({tuple(c) for c in colours[:21]}) == 21


def test_plot_prediction_sheet(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 24, 24, 3), dtype=np.uint8)
    truth = rng.integers(0, 4, (3, 24, 24))
    pred = truth.copy()
    pred[:, :5] = 255  # an ignore index: drawn grey, not a crash
    out = plot_prediction_sheet(images, truth, pred, ["bg", "a", "b", "c"], tmp_path / "s.png")
    assert_png(out)


def test_plot_prediction_sheet_checks_shapes(tmp_path: Path) -> None:
    images = np.zeros((2, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="N,H,W"):
        plot_prediction_sheet(images, np.zeros((2, 8, 8)), np.zeros((2, 8, 7)), ["x"], tmp_path)


# --- confusion summary -----------------------------------------------------------------------

CONFUSION = np.array(
    [
        [90, 5, 0, 1],
        [7, 50, 3, 0],
        [0, 9, 1, 3],
        [0, 0, 0, 0],  # class 3 never occurs in the truth
    ]
)


def test_most_confused_lists_largest_off_diagonal_cells() -> None:
    assert most_confused(CONFUSION, top=3) == [(2, 1, 9), (1, 0, 7), (0, 1, 5)]
    pairs = most_confused(CONFUSION, top=100)
    assert all(t != p and c > 0 for t, p, c in pairs)  # diagonal (90) and zeros never listed
    assert pairs[-3:] == [(1, 2, 3), (2, 3, 3), (0, 3, 1)]  # ties: lower (truth, pred) first


def test_worst_classes_skips_classes_without_truth() -> None:
    worst = worst_classes(CONFUSION, top=10)
    assert [c for c, _, _ in worst] == [2, 1, 0]
    assert worst[0] == (2, pytest.approx(1 / 13), 13)


def test_plot_confusion_summary(tmp_path: Path) -> None:
    names = ["background", "a long class name", "b", "c"]
    assert_png(plot_confusion_summary(CONFUSION.tolist(), names, tmp_path / "c.png", top=3))
    perfect = np.diag([4, 5, 6, 0])
    assert_png(plot_confusion_summary(perfect, names, tmp_path / "p.png"))
    with pytest.raises(ValueError, match="class names"):
        plot_confusion_summary(CONFUSION, names[:3], tmp_path / "x.png")
