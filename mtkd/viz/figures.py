"""The figures a run writes into its folder, from its results and its trained model."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from ..data.build import DataBundle
from ..model.multitask import MultiTaskModel
from .plots import (
    plot_accuracy_by_bin,
    plot_confusion_summary,
    plot_prediction_sheet,
    plot_training_curves,
)

SHEET_SAMPLES = 6


PixelSamples = dict[str, tuple[np.ndarray, np.ndarray]]  # task -> (images, true class maps)


def pixel_samples(
    model: MultiTaskModel, data: DataBundle, indices: Iterable[int], limit: int = SHEET_SAMPLES
) -> PixelSamples:
    """Up to ``limit`` of ``indices`` with a label map, per task with per-pixel labels."""
    out: PixelSamples = {}
    for key, task in model.tasks.items():
        present = data.cached.present.get(task.label_key)
        labels = data.cached.labels.get(task.label_key)
        if present is None or labels is None or labels.ndim != 3 or task.label_space is None:
            continue
        rows = [int(i) for i in indices if present[i]][:limit]
        if rows:
            images = np.stack([data.cached.images[i] for i in rows])
            out[key] = (images, np.stack([labels[i] for i in rows]))
    return out


Warn = Callable[[str], None]


def plugin_of(task: object) -> str:
    """The module a task class comes from: what a warning names as its plugin."""
    return type(task).__module__


def failure(what: str, exc: BaseException, task: object | None = None, key: str = "") -> str:
    """One line: which figure was not drawn, for which task and plugin, and why."""
    whose = f" of task '{key}' (plugin {plugin_of(task)})" if task is not None else ""
    detail = str(exc).splitlines()[0] if str(exc) else ""
    return f"{what}{whose} not drawn: {type(exc).__name__}: {detail}".rstrip(": ")


def _print_warning(line: str) -> None:
    Console(stderr=True).print(f"[yellow]warning:[/yellow] {line}", highlight=False)


@torch.no_grad()
def prediction_sheets(
    model: MultiTaskModel,
    samples: PixelSamples,
    device: torch.device,
    out_dir: Path,
    warn: Warn = _print_warning,
) -> dict[str, Path]:
    """``predictions-<task>.png`` in ``out_dir``: images beside true and predicted maps, for
    each task whose :meth:`~mtkd.Task.class_map` draws one.

    A task whose sheet fails is named in one ``warn`` line and left out: a figure never
    costs a finished run. The model runs in eval mode; every module is then left in the
    mode it was in (a frozen encoder's batch norm stays frozen mid-training)."""
    written = {}
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        for key, (images, truth) in samples.items():
            task = model.tasks[key]
            try:
                tensor = torch.tensor(images).permute(0, 3, 1, 2).float().div(255).to(device)
                pred = task.class_map(model(tensor)[key])
                if pred is None:  # the task's output is not a class map: nothing to draw
                    continue
                names = task.output_space.names if task.output_space is not None else ()
                out = out_dir / f"predictions-{key}.png"
                written[key] = plot_prediction_sheet(
                    images, truth, pred.cpu().numpy(), list(names), out
                )
            except Exception as exc:  # a plugin's figure never stops a run
                warn(failure(f"predictions-{key}.png", exc, task, key))
    finally:
        for module, training in modes:
            module.training = training
    return written


def write_run_figures(
    run_dir: Path,
    model: MultiTaskModel,
    data: DataBundle,
    results: dict[str, Any],
    device: torch.device,
    console: Console | None = None,
) -> list[Path]:
    """curves.png, confusion-<task>.png, predictions-<task>.png, accuracy_by_bin.png.

    Each figure that fails is one warning line naming it (and its task's plugin) on
    ``console``; the others are still drawn, and the run goes on."""

    def warn(line: str) -> None:
        (console or Console(stderr=True)).print(
            f"[yellow]warning:[/yellow] {line}", highlight=False
        )

    written: list[Path] = []

    def draw(what: str, make: Callable[..., Path], *args: Any, key: str = "") -> None:
        try:
            written.append(make(*args))
        except Exception as exc:  # a figure never costs a finished run its results
            warn(failure(what, exc, model.tasks.get(key), key))

    draw("curves.png", plot_training_curves, run_dir)
    for key, matrix in (results.get("confusion") or {}).items():
        draw(f"confusion-{key}.png", _confusion, model, key, matrix, run_dir, key=key)
    try:
        samples = pixel_samples(model, data, data.test.indices)
    except Exception as exc:
        warn(failure("predictions-*.png", exc))
        samples = {}
    written += prediction_sheets(model, samples, device, run_dir, warn).values()
    for key in (results.get("accuracy_by_bin") or {}).get("tasks", {}):
        out = run_dir / f"accuracy_by_bin-{key}.png"
        draw(out.name, plot_accuracy_by_bin, [results], out, key, key=key)
    return written


def _confusion(model: MultiTaskModel, key: str, matrix: Any, run_dir: Path) -> Path:
    space = model.tasks[key].output_space
    names = space.names if space is not None else [str(i) for i in range(len(matrix))]
    return plot_confusion_summary(np.asarray(matrix), names, run_dir / f"confusion-{key}.png")
