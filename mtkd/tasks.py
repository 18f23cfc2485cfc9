"""The task contract: what a task-head plugin declares and implements.

A task is one small class: a registry ``name``, the sample key holding its label, whether its
head reads the encoder's multi-scale taps or its pooled final features, an ``Options``
dataclass for its recipe keys, and four methods (head, loss, metrics, predictions). The
engine handles partial labels: ``loss`` and ``update_metrics`` only ever see the samples of a
batch that carry ``label_key``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torchmetrics
from torch import nn

from .samples import LabelSpace, NoOptions

Role = Literal["student", "teacher"]
ROLES: tuple[str, ...] = ("student", "teacher")
Output = Any  # a Tensor, or a dict of Tensors whose first dimension is the batch


@dataclass(frozen=True)
class FeatureInfo:
    """What the encoder offers a head; channel counts are measured, never hard-coded."""

    tap_names: tuple[str, ...]
    tap_channels: tuple[int, ...]
    tap_reductions: tuple[int, ...]
    final_channels: int
    final_reduction: int
    image_size: int


class Task:
    """Base class of a task-head plugin. Subclass it, set the class variables, register it."""

    name: ClassVar[str] = ""
    label_key: ClassVar[str] = ""
    uses_taps: ClassVar[bool] = False
    default_role: ClassVar[Role] = "student"
    Options: ClassVar[type] = NoOptions

    def __init__(
        self,
        key: str,
        options: Any,
        *,
        role: Role,
        weight: float,
        label_space: LabelSpace | None,
    ) -> None:
        self.key = key  # the task's name in the recipe (usually equal to ``name``)
        self.options = options
        self.role: Role = role
        self.weight = weight
        self.label_space = label_space

    @property
    def num_classes(self) -> int:
        if self.label_space is None:
            raise ValueError(f"task '{self.key}' needs the label space of '{self.label_key}'")
        return self.label_space.num_classes

    def build_head(self, features: FeatureInfo) -> nn.Module:
        """The head module; it receives the list of taps if ``uses_taps`` else the final map."""
        raise NotImplementedError

    def loss(self, output: Output, target: torch.Tensor) -> torch.Tensor:
        """Mean loss over the given (labelled) samples."""
        raise NotImplementedError

    def metrics(self) -> torchmetrics.MetricCollection:
        """Fresh metric objects; their names become ``<task>/<metric>`` in results."""
        return torchmetrics.MetricCollection({})

    def predictions(self, output: Output) -> torch.Tensor:
        """What the metrics consume (logits by default)."""
        if isinstance(output, dict):
            return output["logits"]
        return output

    def update_metrics(
        self, metrics: torchmetrics.MetricCollection, output: Output, target: torch.Tensor
    ) -> None:
        if len(metrics):
            metrics.update(self.predictions(output), target)

    def summarize(self, metrics: torchmetrics.MetricCollection) -> dict[str, Any]:
        """Final values of the updated metrics; override to add derived figures."""
        return {name: value for name, value in metrics.compute().items()}

    def describe(self) -> str:
        return f"{self.key} ({self.name}, {self.role}, weight {self.weight:g})"
