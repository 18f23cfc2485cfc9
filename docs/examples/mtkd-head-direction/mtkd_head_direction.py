"""mtkd-head-direction: which way the head turns, in three classes, from the ``pose`` label.

A classification head on the encoder's pooled final features: ``left`` (yaw below
``-threshold``), ``frontal`` (|yaw| up to ``threshold``) or ``right`` (yaw above
``threshold``), the side of the image the face turns towards (positive yaw turns it to the
image's right, as in the synthetic heads). It needs no labels of its own: it bins the yaw
component of the ``pose`` vector (yaw, pitch, roll in degrees) every synthetic-heads sample
carries, so a horizontal flip, which negates yaw, swaps left and right by itself. Usable as a
teacher (removed by distillation) or a student (kept, with class names for export).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
import torchmetrics
from torch import nn

import mtkd

DIRECTIONS = ("left", "frontal", "right")


@dataclass
class HeadDirectionOptions:  # recipe keys under tasks.head_direction
    threshold: float = 20.0  # degrees of yaw either side of frontal
    component: str = "yaw"  # the component of the pose vector that is binned
    hidden: int = 64  # width of the hidden layer

    def __post_init__(self) -> None:
        mtkd.check_options(self, [("threshold", self.threshold > 0, "must be > 0")])


class HeadDirection(mtkd.Task[HeadDirectionOptions]):
    name = "head_direction"
    label_key = "pose"  # reads the pose vector; the classes are derived from it

    def setup(self) -> None:
        pose, component = self.label_space, self.options.component
        if pose is None or pose.kind != "vector" or component not in pose.names:
            names = ", ".join(pose.names) if pose else "none"
            raise mtkd.OptionError(
                "component",
                f"'{component}' is not a component of the '{self.label_key}' vector ({names})",
            )
        self.column = pose.names.index(component)

    @property
    def output_space(self) -> mtkd.LabelSpace:
        """Three named classes derived from the pose vector (what export and predict name)."""
        return mtkd.LabelSpace(DIRECTIONS)

    def directions(self, pose: torch.Tensor) -> torch.Tensor:
        """Class per sample: 0 left, 1 frontal, 2 right (the threshold itself is frontal)."""
        yaw, threshold = pose[:, self.column], self.options.threshold
        return (yaw >= -threshold).long() + (yaw > threshold).long()

    def build_head(self, features: mtkd.FeatureInfo) -> nn.Module:
        return nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(features.final_channels, self.options.hidden),
            nn.ReLU(),
            nn.Linear(self.options.hidden, self.num_classes),
        )

    def loss(self, output: Any, target: torch.Tensor, head: nn.Module) -> torch.Tensor:
        return F.cross_entropy(output, self.directions(target))

    def metrics(self) -> torchmetrics.MetricCollection:
        accuracy = torchmetrics.classification.MulticlassAccuracy
        return torchmetrics.MetricCollection(
            {
                "accuracy": accuracy(self.num_classes, average="micro"),
                "balanced_accuracy": accuracy(self.num_classes, average="macro"),
            }
        )

    def update_metrics(
        self, metrics: torchmetrics.MetricCollection, output: Any, target: torch.Tensor
    ) -> None:
        metrics.update(self.predictions(output), self.directions(target))


@mtkd.hookimpl
def register_tasks(register: Any) -> None:
    register(HeadDirection)
