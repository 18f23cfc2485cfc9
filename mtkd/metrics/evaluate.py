"""Evaluation: every task's loss and torchmetrics metrics over a data set, partial labels
respected (a task is scored only on the samples that carry its label)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from ..data.batch_augment import images_to_float
from ..data.build import make_loader
from ..model.losses import labelled_outputs
from ..model.multitask import MultiTaskModel
from ..samples import to_device
from ..utils import distributed
from ..weighting import weighted_losses


def _plain(value: torch.Tensor) -> float | list[float]:
    value = value.detach().cpu()
    return float(value) if value.numel() == 1 else [float(v) for v in value.flatten()]


@torch.no_grad()
def evaluate_loader(
    model: MultiTaskModel, loader: DataLoader, device: torch.device | str = "cpu"
) -> dict[str, Any]:
    """``<task>/loss``, ``<task>/<metric>``, ``<task>/count``, and ``loss`` by the one rule
    (:func:`~mtkd.weighting.fixed_total` of the tasks' means over their labelled samples);
    a model with teachers also gets ``student_loss``, the same over its student tasks: what
    its distilled model's ``loss`` is comparable to."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    metrics = {key: task.metrics().to(device) for key, task in model.tasks.items()}
    sums = {key: torch.zeros((), device=device) for key in model.tasks}
    counts = dict.fromkeys(model.tasks, 0)
    try:
        for raw in loader:
            batch = images_to_float(to_device(raw, device))  # uint8 images: data.augment_on
            outputs = model(batch["image"])
            for key, task, output, target in labelled_outputs(outputs, batch, model.tasks):
                if target is None:
                    continue
                n = int(target.shape[0])
                sums[key] += task.loss(output, target, model.heads[key]).detach() * n
                counts[key] += n
                task.update_metrics(metrics[key], output, target)
    finally:
        model.train(was_training)
    if distributed.is_active():  # each rank saw a shard: sum losses and counts over ranks
        keys = list(model.tasks)
        values = distributed.sum_over_ranks(
            [sums[k] for k in keys] + [float(counts[k]) for k in keys], device
        )
        sums = {k: torch.tensor(values[i]) for i, k in enumerate(keys)}
        counts = {k: int(values[len(keys) + i]) for i, k in enumerate(keys)}
    results: dict[str, Any] = {}
    means: dict[str, float] = {}
    for key, task in model.tasks.items():  # torchmetrics syncs its states over ranks itself
        results[f"{key}/count"] = counts[key]
        if counts[key] == 0:
            continue
        means[key] = results[f"{key}/loss"] = float(sums[key]) / counts[key]
        for name, value in task.summarize(metrics[key]).items():
            results[f"{key}/{name}"] = _plain(value) if isinstance(value, torch.Tensor) else value
    results.update(weighted_losses(means, model.tasks))
    return results


def evaluate(
    model: MultiTaskModel,
    dataset: Dataset,
    *,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Evaluate ``model`` on a data set (e.g. ``data.test``); see :func:`evaluate_loader`."""
    loader = make_loader(dataset, batch_size, shuffle=False)
    return evaluate_loader(model.to(device), loader, device)


def prefixed(results: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    return {f"{prefix}/{k}": v for k, v in results.items()}
