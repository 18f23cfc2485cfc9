"""Identification task: who is in the image.

The paper's head: global average pool → Linear 128 → ReLU → Linear N (softmax via the
cross-entropy loss). The 128-d layer is the embedding used for verification.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
import torchmetrics
from torch import nn

import mtkd


@dataclass
class IdentificationOptions:
    embedding_dim: int = 128
    label_smoothing: float = 0.0


class IdentificationHead(nn.Module):
    def __init__(self, in_channels: int, embedding_dim: int, num_classes: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.embed = nn.Linear(in_channels, embedding_dim)
        self.classify = nn.Linear(embedding_dim, num_classes)

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        embedding = F.relu(self.embed(self.pool(features).flatten(1)))
        return {"logits": self.classify(embedding), "embedding": embedding}


class Identification(mtkd.Task):
    name = "identification"
    label_key = "identity"
    Options = IdentificationOptions

    def build_head(self, features: mtkd.FeatureInfo) -> nn.Module:
        return IdentificationHead(
            features.final_channels, self.options.embedding_dim, self.num_classes
        )

    def loss(self, output: Any, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            output["logits"], target, label_smoothing=self.options.label_smoothing
        )

    def metrics(self) -> torchmetrics.MetricCollection:
        n = self.num_classes
        metrics: dict[str, torchmetrics.Metric | torchmetrics.MetricCollection] = {
            "top1": torchmetrics.classification.MulticlassAccuracy(n, top_k=1, average="micro")
        }
        if n > 5:
            metrics["top5"] = torchmetrics.classification.MulticlassAccuracy(
                n, top_k=5, average="micro"
            )
        return torchmetrics.MetricCollection(metrics)


@mtkd.hookimpl
def register_tasks(register: Any) -> None:
    register(Identification)
