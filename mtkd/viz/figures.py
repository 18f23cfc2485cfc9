"""The figures a run writes into its folder, from its results and its trained model."""

from __future__ import annotations

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


@torch.no_grad()
def _prediction_sheets(
    run_dir: Path, model: MultiTaskModel, data: DataBundle, device: torch.device
) -> list[Path]:
    """Test images beside true and predicted maps, for every task with per-pixel labels."""
    written = []
    model.eval()
    for key, task in model.tasks.items():
        present = data.cached.present.get(task.label_key)
        labels = data.cached.labels.get(task.label_key)
        if present is None or labels is None or labels.ndim != 3 or task.label_space is None:
            continue
        rows = [int(i) for i in data.test.indices if present[i]][:SHEET_SAMPLES]
        if not rows:
            continue
        images = np.stack([data.cached.images[i] for i in rows])
        tensor = torch.tensor(images).permute(0, 3, 1, 2).float().div(255).to(device)
        pred = task.predictions(model(tensor)[key]).argmax(1).cpu().numpy()
        truth = np.stack([labels[i] for i in rows])
        out = run_dir / f"predictions-{key}.png"
        written.append(plot_prediction_sheet(images, truth, pred, task.label_space.names, out))
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
    written += _prediction_sheets(run_dir, model, data, device)
    for key in (results.get("accuracy_by_bin") or {}).get("tasks", {}):
        written.append(
            plot_accuracy_by_bin([results], run_dir / f"accuracy_by_bin-{key}.png", task=key)
        )
    return written
