"""MultiTaskModel: one encoder, one head per task, and the surgery distillation needs."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ..tasks import Output, Task
from .encoder import Encoder


@dataclass(frozen=True)
class ParameterCounts:
    """Trainable parameters, all parameters, and Keras-style (parameters + BN running stats)."""

    trainable: int
    total: int
    keras: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def count_parameters(module: nn.Module) -> ParameterCounts:
    """Keras counts BatchNorm's moving mean and variance as (non-trainable) parameters."""
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    total = sum(p.numel() for p in module.parameters())
    bn_stats = sum(
        buf.numel()
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._NormBase)
        for name, buf in m.named_buffers(recurse=False)
        if name in ("running_mean", "running_var") and buf is not None
    )
    return ParameterCounts(trainable=trainable, total=total, keras=total + bn_stats)


class MultiTaskModel(nn.Module):
    """Encoder + task heads; ``forward`` returns ``{task_key: head output}``."""

    def __init__(self, encoder: Encoder, tasks: Mapping[str, Task]) -> None:
        super().__init__()
        self.encoder = encoder
        self.tasks: dict[str, Task] = dict(tasks)
        self.heads = nn.ModuleDict(
            {key: task.build_head(encoder.feature_info) for key, task in self.tasks.items()}
        )

    def forward(self, images: torch.Tensor) -> dict[str, Output]:
        taps, final = self.encoder(images)
        return {
            key: self.heads[key](taps if task.uses_taps else final)
            for key, task in self.tasks.items()
        }

    def task_loss(self, key: str, output: Output, target: torch.Tensor) -> torch.Tensor:
        """Task ``key``'s loss on its head's ``output`` (samples that carry its label)."""
        return self.tasks[key].loss(output, target, self.heads[key])

    def without_tasks(self, keys: Iterable[str]) -> MultiTaskModel:
        """A copy without the given tasks' heads, and without taps no remaining head reads."""
        drop = set(keys)
        unknown = drop - set(self.tasks)
        if unknown:
            raise KeyError(f"no such task(s): {sorted(unknown)}")
        clone = copy.deepcopy(self)
        for key in drop:
            del clone.heads[key]
            del clone.tasks[key]
        if not any(task.uses_taps for task in clone.tasks.values()):
            clone.encoder.without_taps()
        return clone

    def parameter_counts(self) -> ParameterCounts:
        return count_parameters(self)

    def describe(self) -> dict[str, Any]:
        return {
            "encoder": type(self.encoder.trunk).__name__,
            "taps": list(self.encoder.tap_names),
            "tasks": {key: task.describe() for key, task in self.tasks.items()},
        }
