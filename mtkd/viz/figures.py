"""The figures a run writes into its folder, from its results and its trained model."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

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


@torch.no_grad()
def prediction_sheets(
    model: MultiTaskModel,
    samples: PixelSamples,
    device: torch.device,
    out_dir: Path,
) -> dict[str, Path]:
    """``predictions-<task>.png`` in ``out_dir``: images beside true and predicted maps.

    The model runs in eval mode; every module is then left in the mode it was in (a frozen
    encoder's batch norm stays frozen mid-training)."""
    written = {}
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        for key, (images, truth) in samples.items():
            task = model.tasks[key]
            assert task.label_space is not None  # pixel_samples keeps only such tasks
            tensor = torch.tensor(images).permute(0, 3, 1, 2).float().div(255).to(device)
            pred = task.predictions(model(tensor)[key]).argmax(1).cpu().numpy()
            out = out_dir / f"predictions-{key}.png"
            written[key] = plot_prediction_sheet(images, truth, pred, task.label_space.names, out)
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
) -> list[Path]:
    """curves.png, confusion-<task>.png, predictions-<task>.png, accuracy_by_bin.png."""
    written = [plot_training_curves(run_dir)]
    for key, matrix in (results.get("confusion") or {}).items():
        space = model.tasks[key].output_space
        names = space.names if space is not None else [str(i) for i in range(len(matrix))]
        written.append(
            plot_confusion_summary(np.asarray(matrix), names, run_dir / f"confusion-{key}.png")
        )
    samples = pixel_samples(model, data, data.test.indices)
    written += prediction_sheets(model, samples, device, run_dir).values()
    for key in (results.get("accuracy_by_bin") or {}).get("tasks", {}):
        written.append(
            plot_accuracy_by_bin([results], run_dir / f"accuracy_by_bin-{key}.png", task=key)
        )
    return written
