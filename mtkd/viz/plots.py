"""Figures from run folders and evaluation outputs, written as PNG files.

Every figure is drawn off-screen (Agg) so plotting works on headless training machines, and is
closed after saving so that plotting many runs in one process does not accumulate figures.
The numbers behind the two summary figures come from small pure helpers
(:func:`mean_by_bin`, :func:`most_confused`, :func:`worst_classes`) that can be tested and
printed without drawing anything.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display needed, no GUI event loop

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator, PercentFormatter
from numpy.typing import ArrayLike

from ..engine.metrics_log import read_metrics
from ..errors import MtkdError
from ..utils.layout import METRICS

if TYPE_CHECKING:
    from matplotlib.typing import RcKeyType

__all__ = [
    "BinMean",
    "class_colours",
    "mean_by_bin",
    "most_confused",
    "plot_accuracy_by_bin",
    "plot_confusion_summary",
    "plot_prediction_sheet",
    "plot_training_curves",
    "run_bins",
    "worst_classes",
]

DPI = 100
# One place for fonts and grid, so every figure reads the same at 100 dpi.
_STYLE: dict[RcKeyType, Any] = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
}


@contextmanager
def _figure(
    out: Path, nrows: int = 1, ncols: int = 1, *, size: tuple[float, float]
) -> Iterator[tuple[Figure, np.ndarray]]:
    """A styled figure with a 2-D array of axes, saved to ``out`` and always closed."""
    with plt.rc_context(_STYLE):
        fig, axes = plt.subplots(nrows, ncols, figsize=size, squeeze=False, layout="constrained")
        try:
            yield fig, axes
            out.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(out, dpi=DPI)
        finally:
            plt.close(fig)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# --- training curves -------------------------------------------------------------------------


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise MtkdError(f"'{path.parent}' has no {path.name}: not a run folder")
    rows, _ = read_metrics(path)  # a damaged line is left out (the report says so)
    if not rows:
        raise MtkdError(f"{path} holds no epoch yet")
    return rows


def _series(rows: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(epochs, values) of one key, skipping epochs where it is missing or not a scalar."""
    points = [(r["epoch"], r[key]) for r in rows if _is_number(r.get(key))]
    return [float(e) for e, _ in points], [float(v) for _, v in points]


def _tasks(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Task keys in first-seen order, from ``train/<task>/loss`` and ``val/<task>/loss``."""
    seen: dict[str, None] = {}
    for row in rows:
        for key in row:
            parts = key.split("/")
            if len(parts) == 3 and parts[0] in ("train", "val") and parts[2] == "loss":
                seen.setdefault(parts[1], None)
    return list(seen)


def _val_metrics(rows: Sequence[Mapping[str, Any]], task: str) -> list[str]:
    """Scalar validation metrics of a task (not its loss, not its sample count)."""
    prefix = f"val/{task}/"
    names: dict[str, None] = {}
    for row in rows:
        for key, value in row.items():
            name = key.removeprefix(prefix)
            if key.startswith(prefix) and name not in ("loss", "count") and _is_number(value):
                names.setdefault(name, None)
    return list(names)


def _best_epoch(rows: Sequence[Mapping[str, Any]]) -> float | None:
    """The last epoch flagged ``best``; failing that, the lowest validation loss."""
    flagged = [r["epoch"] for r in rows if r.get("best") is True]
    if flagged:
        return float(flagged[-1])
    epochs, losses = _series(rows, "val/loss")
    return epochs[int(np.argmin(losses))] if losses else None


def _metric_axis(
    ax: Axes, rows: Sequence[Mapping[str, Any]], task: str, metrics: Sequence[str]
) -> list[Line2D]:
    """The task's validation metrics on a twin right axis; returns their lines."""
    twin = ax.twinx()
    twin.grid(False)
    twin.spines["right"].set_visible(True)
    twin.set_ylabel("validation metric")
    colours = plt.get_cmap("Dark2").colors  # type: ignore[attr-defined]
    lines, values = [], []
    for i, name in enumerate(metrics):
        epochs, series = _series(rows, f"val/{task}/{name}")
        colour = colours[(i + 2) % len(colours)]  # keep clear of the blue/orange losses
        lines += twin.plot(epochs, series, ":", marker="x", color=colour)
        values += series
    if all(0 <= v <= 1 for v in values):
        twin.set_ylim(0, 1.02)  # fractions: a fixed scale keeps small changes in proportion
    return lines


def _curve_panel(
    ax: Axes, rows: Sequence[Mapping[str, Any]], task: str | None, best: float | None
) -> None:
    """Train/val loss on the left axis, validation metrics (if any) on a twin right axis."""
    prefix = "" if task is None else f"{task}/"
    ax.set_title("total (weighted) loss" if task is None else task)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for split, style in (("train", "-"), ("val", "--")):
        epochs, values = _series(rows, f"{split}/{prefix}loss")
        if values:
            ax.plot(epochs, values, style, marker=".", label=f"{split} loss")
    handles, labels = ax.get_legend_handles_labels()
    metrics = [] if task is None else _val_metrics(rows, task)
    if task is not None and metrics:
        handles += _metric_axis(ax, rows, task, metrics)
        labels += [f"val {name}" for name in metrics]
    if best is not None:
        handles.append(ax.axvline(best, color="0.4", linewidth=1, linestyle="-."))
        labels.append(f"best epoch ({best:g})")
    # below the panel: a legend inside would hide curves, and the twin axis draws over it
    ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3)


def plot_training_curves(run_dir: str | Path) -> Path:
    """``<run>/curves.png``: one panel for the total loss and one per task, over epochs.

    Losses and metrics live on different scales, so metrics go on a twin axis; the best epoch
    (the weights the run kept) is marked so over-fitting after it is visible at a glance.
    """
    run_dir = Path(run_dir)
    rows = _read_metrics(run_dir / METRICS)
    panels: list[str | None] = [None, *_tasks(rows)]
    ncols = min(len(panels), 3)
    nrows = math.ceil(len(panels) / ncols)
    best = _best_epoch(rows)
    out = run_dir / "curves.png"
    with _figure(out, nrows, ncols, size=(5.2 * ncols, 3.8 * nrows)) as (fig, axes):
        for ax, task in zip(axes.flat, panels, strict=False):
            _curve_panel(ax, rows, task, best)
        for ax in axes.flat[len(panels) :]:
            ax.set_visible(False)
        fig.suptitle(f"training curves: {run_dir.name}")
    return out


# --- accuracy by bin -------------------------------------------------------------------------


@dataclass(frozen=True)
class BinMean:
    """One bin of one recipe, over its seeds: mean accuracy and the spread between seeds."""

    low: float
    high: float
    mean: float
    min: float
    max: float
    std: float
    seeds: int  # runs that had samples in this bin

    @property
    def centre(self) -> float:
        return (self.low + self.high) / 2


def _bin_info(run: Mapping[str, Any]) -> Mapping[str, Any] | None:
    info = run.get("accuracy_by_bin")
    return info if isinstance(info, Mapping) else None


def run_bins(run: Mapping[str, Any], task: str, source: str = "classifier") -> list[Any]:
    """A run's bins for ``task``: the classifier's accuracy (``accuracy_by_bin``) or, with
    ``source="gallery"``, gallery/probe rank-1 (``gallery``); [] when the run has none."""
    if source == "gallery":
        gallery = run.get("gallery")
        section = gallery.get("tasks", {}).get(task) if isinstance(gallery, Mapping) else None
        return list((section or {}).get("rank1_by_bin") or [])
    info = _bin_info(run)
    return list((info.get("tasks", {}).get(task) if info else None) or [])


def mean_by_bin(
    runs: Sequence[Mapping[str, Any]], task: str, source: str = "classifier"
) -> dict[str, list[BinMean]]:
    """Per recipe (first-seen order), the seed-averaged accuracy of each non-empty bin.

    A bin counts for a seed only when it held samples there (accuracy not null, count > 0), so
    an empty bin does not drag the mean to zero. Out-of-range bins (a ``None`` end) have no
    centre to plot at and are left out, as are runs without bins for ``task`` (``source``:
    see :func:`run_bins`).
    """
    values: dict[str, dict[tuple[float, float], list[float]]] = {}
    for run in runs:
        bins = run_bins(run, task, source)
        if not bins:
            continue
        per_bin = values.setdefault(str(run.get("recipe", "?")), {})
        for b in bins:
            ends = (b.get("low"), b.get("high"))
            if _is_number(b.get("accuracy")) and b.get("count") != 0 and None not in ends:
                per_bin.setdefault((float(b["low"]), float(b["high"])), []).append(b["accuracy"])
    return {
        recipe: [
            BinMean(low, high, statistics.fmean(v), min(v), max(v), statistics.pstdev(v), len(v))
            for (low, high), v in sorted(per_bin.items())
        ]
        for recipe, per_bin in values.items()
    }


def _bin_axis_name(runs: Sequence[Mapping[str, Any]]) -> str:
    """``label component`` (e.g. "pose yaw"), which must agree across runs to share an axis."""
    names = {
        " ".join(str(info[k]) for k in ("label", "component") if info.get(k))
        for run in runs
        if (info := _bin_info(run)) is not None
    }
    if len(names) > 1:
        raise MtkdError(f"runs bin accuracy by different quantities: {sorted(names)}")
    return names.pop() if names else "bin"


def plot_accuracy_by_bin(
    runs: Sequence[Mapping[str, Any]], out: str | Path, task: str = "identification"
) -> Path:
    """One line per recipe: accuracy against the bin centre, with the seeds' min-max band.

    Shows where along a nuisance variable (e.g. head yaw) each recipe degrades, and whether
    the gap between recipes is larger than the spread between seeds.
    """
    out = Path(out)
    means = mean_by_bin(runs, task)
    if not means:
        raise MtkdError(f"no run has accuracy_by_bin for task '{task}'")
    axis_name = _bin_axis_name(runs)
    gallery = mean_by_bin(runs, task, "gallery")
    with _figure(out, size=(7.5, 4.5)) as (_fig, axes):
        ax = axes[0, 0]
        for recipe, bins in means.items():
            colour = _bin_line(ax, bins, recipe, "-", None)
            if recipe in gallery:
                _bin_line(ax, gallery[recipe], f"{recipe} gallery rank-1", "--", colour)
        ax.set_ylim(0, 1.02)
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.set_xlabel(f"{axis_name} (bin centre)")
        ax.set_ylabel(f"{task} accuracy")
        shown = "classifier (solid), gallery rank-1 (dashed)" if gallery else "classifier"
        ax.set_title(f"{task} by {axis_name}: {shown}; band: min-max over seeds", fontsize=10)
        ax.legend(loc="best", framealpha=0.85)
    return out


def _bin_line(ax: Axes, bins: Sequence[BinMean], name: str, style: str, colour: str | None) -> str:
    """One recipe's accuracy by bin, with the seeds' min-max band; returns its colour."""
    x = [b.centre for b in bins]
    seeds = max(b.seeds for b in bins)
    (line,) = ax.plot(
        x,
        [b.mean for b in bins],
        linestyle=style,
        marker="o" if style == "-" else "s",
        color=colour,
        label=f"{name} ({seeds} seed{'s' * (seeds > 1)})",
    )
    if seeds > 1:
        lows, highs = [b.min for b in bins], [b.max for b in bins]
        alpha = 0.18 if style == "-" else 0.1
        ax.fill_between(x, lows, highs, color=line.get_color(), alpha=alpha, linewidth=0)
    return str(to_hex(line.get_color()))


# --- prediction sheet ------------------------------------------------------------------------


def class_colours(num_classes: int) -> np.ndarray:
    """(num_classes + 1, 3) RGB floats: class 0 black, then distinct qualitative colours.

    The strong tab20 colours come before their light partners so that few-class maps never
    put two near-identical shades side by side; the extra last row (light grey) is for any index
    outside the class range (e.g. an ignore index).
    """
    palette = []
    for name in ("tab20", "tab20b", "tab20c"):
        pairs = plt.get_cmap(name).colors  # type: ignore[attr-defined]
        palette += [*pairs[0::2], *pairs[1::2]]
    rows = [(0.0, 0.0, 0.0)] + [palette[i % len(palette)] for i in range(num_classes - 1)]
    return np.array([*rows, (0.85, 0.85, 0.85)], dtype=np.float64)


def _colourise(labels: np.ndarray, colours: np.ndarray) -> np.ndarray:
    outside = (labels < 0) | (labels >= len(colours) - 1)
    return colours[np.where(outside, len(colours) - 1, labels)]


def plot_prediction_sheet(
    images: np.ndarray,
    truth: np.ndarray,
    pred: np.ndarray,
    class_names: Sequence[str],
    out: str | Path,
) -> Path:
    """Per sample one row: the image, its ground-truth class map and the predicted map.

    Side by side, with fixed colours per class, so systematic mistakes (a part always
    swallowed by its neighbour) are visible without reading numbers.
    """
    out = Path(out)
    images, truth, pred = np.asarray(images), np.asarray(truth), np.asarray(pred)
    n = len(images)
    if n == 0 or images.ndim != 4 or truth.shape != pred.shape or truth.shape != images.shape[:3]:
        raise ValueError(
            f"need images (N,H,W,3) with truth and pred (N,H,W), got {images.shape}, "
            f"{truth.shape} and {pred.shape} (N > 0)"
        )
    colours = class_colours(len(class_names))
    with _figure(out, n, 3, size=(7.2, 2.3 * n + 1.2)) as (fig, axes):
        for row, (image, t, p) in enumerate(zip(images, truth, pred, strict=True)):
            for ax, picture in zip(
                axes[row], (image, _colourise(t, colours), _colourise(p, colours)), strict=True
            ):
                ax.imshow(picture, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                ax.spines[:].set_visible(True)  # a frame, so a light map keeps its extent
        for ax, title in zip(axes[0], ("image", "ground truth", "prediction"), strict=True):
            ax.set_title(title)
        present = np.unique(np.concatenate([truth.ravel(), pred.ravel()]))
        known = [int(c) for c in present if 0 <= c < len(class_names)]
        entries = [(colours[c], class_names[c]) for c in known]
        if len(known) < len(present):  # ignore indices and the like share one grey entry
            entries.append((colours[-1], "(no class)"))
        handles = [Patch(facecolor=c, edgecolor="0.5", label=name) for c, name in entries]
        fig.legend(handles=handles, loc="outside lower center", ncol=min(4, len(handles)))
    return out


# --- confusion summary -----------------------------------------------------------------------


def _square(confusion: ArrayLike, class_names: Sequence[str] | None = None) -> np.ndarray:
    cm = np.asarray(confusion)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be (C, C), got shape {cm.shape}")
    if class_names is not None and len(class_names) != cm.shape[0]:
        raise ValueError(f"{len(class_names)} class names for a {cm.shape[0]}-class matrix")
    return cm


def most_confused(confusion: ArrayLike, top: int = 10) -> list[tuple[int, int, int]]:
    """The ``top`` largest off-diagonal cells as ``(truth, predicted, count)``, largest first.

    Rows are the truth. Zero cells are never listed; ties go to the lower (truth, predicted)
    index so the order is reproducible.
    """
    cm = _square(confusion).copy()
    np.fill_diagonal(cm, 0)
    cells = [(int(t), int(p), int(cm[t, p])) for t, p in zip(*np.nonzero(cm), strict=True)]
    return sorted(cells, key=lambda c: (-c[2], c[0], c[1]))[:top]


def worst_classes(confusion: ArrayLike, top: int = 10) -> list[tuple[int, float, int]]:
    """The ``top`` classes with the lowest recall as ``(class, accuracy, support)``.

    Accuracy is the diagonal over the row sum; classes with no true samples have no
    accuracy and are left out rather than shown as 0.
    """
    cm = _square(confusion)
    support = cm.sum(axis=1)
    rows = [
        (int(c), float(cm[c, c] / support[c]), int(support[c])) for c in np.flatnonzero(support)
    ]
    return sorted(rows, key=lambda r: (r[1], r[0]))[:top]


def _barh(ax: Axes, labels: Sequence[str], values: Sequence[float], notes: Sequence[str]) -> None:
    """Horizontal bars, first item on top, each annotated at its end."""
    y = np.arange(len(values))
    ax.barh(y, values, color="tab:red", alpha=0.75)
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.grid(axis="y", visible=False)
    for yi, value, note in zip(y, values, notes, strict=True):
        ax.annotate(note, (value, yi), xytext=(3, 0), textcoords="offset points", va="center")
    ax.margins(x=0.15)


def plot_confusion_summary(
    confusion: ArrayLike, class_names: Sequence[str], out: str | Path, top: int = 10
) -> Path:
    """Left: the ``top`` most confused (truth → predicted) pairs; right: the worst classes.

    A full C-by-C matrix is unreadable for many classes; the handful of largest mistakes and
    the weakest classes are what one acts on. ``confusion`` is a count matrix, rows = truth
    (an array or nested lists, as in results.json); pairs and classes come from
    :func:`most_confused` and :func:`worst_classes`.
    """
    out = Path(out)
    cm = _square(confusion, class_names)
    pairs = most_confused(cm, top)
    worst = worst_classes(cm, top)
    height = 0.32 * max(len(pairs), len(worst), 3) + 1.4
    with _figure(out, 1, 2, size=(11.0, height)) as (_fig, axes):
        left, right = axes[0]
        if pairs:
            names = [f"{class_names[t]} → {class_names[p]}" for t, p, _ in pairs]
            _barh(left, names, [c for *_, c in pairs], [f"{c:,}" for *_, c in pairs])
        else:
            left.text(0.5, 0.5, "no confusions", ha="center", va="center")
            left.set_yticks([])
        left.set_title(f"most confused pairs (truth → predicted), top {top}")
        left.set_xlabel("count")
        left.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
        accuracy = [a for _, a, _ in worst]
        notes = [f"{a:.0%} of {n:,}" for _, a, n in worst]
        _barh(right, [class_names[c] for c, _, _ in worst], accuracy, notes)
        right.set_xlim(0, 1.25)  # room for the notes right of a 100 % bar
        right.set_xticks([0, 0.25, 0.5, 0.75, 1.0])
        right.xaxis.set_major_formatter(PercentFormatter(1.0))
        right.set_title(f"per-class accuracy, worst {top}")
        right.set_xlabel("accuracy (recall)")
    return out
