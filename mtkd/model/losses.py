"""Per-task losses over the samples that carry each task's label."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
from torch import nn

from ..samples import PRESENT, Batch
from ..tasks import Output, Task


def select_samples(output: Output, keep: torch.Tensor) -> Output:
    """The rows of a head output (a tensor or a dict of tensors) where ``keep`` is true."""
    if isinstance(output, torch.Tensor):
        return output[keep]
    if isinstance(output, Mapping):
        return {k: select_samples(v, keep) for k, v in output.items()}
    raise TypeError(
        f"head outputs must be tensors or dicts of tensors, got {type(output).__name__}"
    )


def _zero_like(output: Output) -> torch.Tensor:
    """A zero that keeps the head in the graph, so unused parameters never stall DDP."""
    if isinstance(output, torch.Tensor):
        return output.sum() * 0.0
    return sum((_zero_like(v) for v in output.values()), torch.zeros(()))


def labelled(batch: Batch, task: Task) -> torch.Tensor | None:
    """Bool mask of the batch's samples carrying ``task.label_key``; None if none has it."""
    present = batch.get(PRESENT, {}).get(task.label_key)
    if present is None or not bool(present.any()):
        return None
    return present


def labelled_outputs(
    outputs: Mapping[str, Output], batch: Batch, tasks: Mapping[str, Task]
) -> Iterator[tuple[str, Task, Output, torch.Tensor | None]]:
    """Per task: its output and target restricted to the samples carrying its label.

    The target is None when no sample of the batch carries the label; the output is then
    the whole output (so callers can still keep the head in the graph).
    """
    for key, task in tasks.items():
        present = labelled(batch, task)
        if present is None:
            yield key, task, outputs[key], None
            continue
        target = batch[task.label_key]
        if bool(present.all()):
            yield key, task, outputs[key], target
        else:
            idx = present.nonzero().squeeze(1).to(target.device)
            yield key, task, select_samples(outputs[key], idx), target[idx]


def task_losses(
    outputs: Mapping[str, Output],
    batch: Batch,
    tasks: Mapping[str, Task],
    heads: Mapping[str, nn.Module] | nn.ModuleDict,
) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Loss and labelled-sample count per task; a task with no labelled sample gets a zero."""
    losses: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    for key, task, output, target in labelled_outputs(outputs, batch, tasks):
        if target is None:
            losses[key], counts[key] = _zero_like(output), 0
        else:
            losses[key] = task.loss(output, target, heads[key])
            counts[key] = int(target.shape[0])
    return losses, counts
