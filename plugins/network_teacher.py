"""The ``network_teacher`` task: learn a frozen network's outputs, then be removed.

Its recipe block names the teacher network (``teacher: {name: mtkd_run | onnx | dlib_face |
<plugin>, ...}``); mtkd computes that network's output on every sample once, before
training, and this task's head learns to reproduce it from the shared encoder. The head is a
teacher task's (role ``teacher`` by default): the distillation hook removes it, so the
knowledge stays in the encoder and the inference model holds neither the head nor the
teacher. Losses (``loss``):

- ``kl`` (Hinton et al. 2015, for a logits teacher): T² · KL(softmax(t/T) ‖ softmax(s/T)),
  averaged over the samples; ``temperature`` is T.
- ``cosine`` / ``mse`` (FitNets, embedding distillation): a projection head maps the
  encoder's pooled features to the teacher's dimension; 1 - cosine, or the mean squared error.
- ``rkd`` (Park et al. 2019, relational KD): the student's and teacher's pairwise distances
  (each normalised by its mean) and the angles of every triplet must agree (smooth-L1 terms
  weighted ``rkd_distance`` and ``rkd_angle``); absolute positions do not matter, so the
  student's embedding may live in its own space.
- ``auto``: ``kl`` for a logits teacher, ``cosine`` for an embedding teacher.

An embedding teacher becomes a logits teacher over a task's classes with ``teacher: {...,
as_classes: identification}`` (cosines to the training split's class centroids, made by the
data stage: mtkd/data/targets.py), and then learns by ``kl`` like any logits teacher.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
import torchmetrics
from torch import nn

import mtkd

LOSSES = ("auto", "kl", "cosine", "mse", "rkd")


@dataclass
class NetworkTeacherOptions:
    teacher: dict[str, Any] = field(default_factory=dict)  # {name: <teacher network>, ...}
    loss: str = "auto"  # auto | kl | cosine | mse | rkd
    temperature: float = 4.0  # kl: T
    # the head's hidden layer (pool -> Linear hidden -> ReLU -> Linear out); 0: one Linear
    # layer (a FitNets-style projection); None: 128 for kl, 0 otherwise
    hidden_dim: int | None = None
    rkd_distance: float = 1.0  # rkd: weight of the distance term
    rkd_angle: float = 2.0  # rkd: weight of the angle term

    def __post_init__(self) -> None:
        mtkd.check_options(
            self,
            [
                ("loss", self.loss in LOSSES, f"must be one of {', '.join(LOSSES)}"),
                ("temperature", self.temperature > 0, "must be > 0"),
                ("hidden_dim", self.hidden_dim is None or self.hidden_dim >= 0, "must be >= 0"),
                ("rkd_distance", self.rkd_distance >= 0, "must be >= 0"),
                ("rkd_angle", self.rkd_angle >= 0, "must be >= 0"),
            ],
        )


class ProjectionHead(nn.Module):
    """Pool -> (Linear -> ReLU) -> Linear: the student's guess at the teacher's output."""

    def __init__(self, in_channels: int, hidden: int, out: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        if hidden:
            self.project: nn.Module = nn.Sequential(
                nn.Linear(in_channels, hidden), nn.ReLU(), nn.Linear(hidden, out)
            )
        else:
            self.project = nn.Linear(in_channels, out)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.project(self.pool(features).flatten(1))
        return out


def soft_target_kl(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Hinton's soft-target loss: T² · KL(softmax(t/T) ‖ softmax(s/T)), mean over samples."""
    log_p = F.log_softmax(student.float() / temperature, dim=1)
    log_q = F.log_softmax(teacher.float() / temperature, dim=1)
    kl = F.kl_div(log_p, log_q, reduction="batchmean", log_target=True)
    return kl * temperature**2


def _normalised_distances(x: torch.Tensor) -> torch.Tensor:
    distances = torch.cdist(x, x)
    off_diagonal = distances[~torch.eye(len(x), dtype=torch.bool, device=x.device)]
    return distances / off_diagonal.mean().clamp_min(1e-12)


def _angles(x: torch.Tensor) -> torch.Tensor:
    """cos of the angle at j between i and k, for every (i, j, k)."""
    e = F.normalize(x.unsqueeze(0) - x.unsqueeze(1), p=2, dim=2)  # e[j, i] = unit(x_i - x_j)
    return torch.bmm(e, e.transpose(1, 2)).flatten()


def relational_kd(
    student: torch.Tensor, teacher: torch.Tensor, distance_weight: float, angle_weight: float
) -> torch.Tensor:
    """RKD (Park et al. 2019): smooth-L1 between normalised pairwise distances, and between
    triplet angles, of the student's and the teacher's vectors. Needs 3 samples (else 0)."""
    if len(student) < 3:
        return student.sum() * 0.0
    s, t = student.float(), teacher.float()
    loss = distance_weight * F.smooth_l1_loss(_normalised_distances(s), _normalised_distances(t))
    return loss + angle_weight * F.smooth_l1_loss(_angles(s), _angles(t))


class CosineAgreement(torchmetrics.MeanMetric):
    """Mean cosine similarity between the head's output and the teacher's."""

    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:  # type: ignore[override]
        super().update(F.cosine_similarity(output.float(), target.float(), dim=1))


class NetworkTeacher(mtkd.Task[NetworkTeacherOptions]):
    name = "network_teacher"
    uses_taps = False
    default_role = "teacher"
    console_metrics = ("agreement", "cosine")

    @classmethod
    def label_key_for(cls, key: str) -> str:
        return mtkd.teacher_label_key(key)

    def setup(self) -> None:
        space = self.label_space
        assert space is not None
        logits = space.kind == "logits"
        loss = self.options.loss
        self.loss_name = ("kl" if logits else "cosine") if loss == "auto" else loss
        if self.loss_name == "kl" and not logits:
            raise mtkd.OptionError(
                "loss",
                "kl needs a teacher that outputs logits "
                "(an embedding teacher: add teacher.as_classes: <a class task's key>)",
            )
        hidden = self.options.hidden_dim
        self.hidden = (128 if self.loss_name == "kl" else 0) if hidden is None else hidden

    @property
    def output_space(self) -> mtkd.LabelSpace | None:
        return self.label_space

    def build_head(self, features: mtkd.FeatureInfo) -> nn.Module:
        return ProjectionHead(features.final_channels, self.hidden, self.num_classes)

    def loss(self, output: Any, target: torch.Tensor, head: nn.Module) -> torch.Tensor:
        o = self.options
        if self.loss_name == "kl":
            return soft_target_kl(output, target, o.temperature)
        if self.loss_name == "cosine":
            return (1 - F.cosine_similarity(output.float(), target.float(), dim=1)).mean()
        if self.loss_name == "mse":
            return F.mse_loss(output.float(), target.float())
        return relational_kd(output, target, o.rkd_distance, o.rkd_angle)

    def metrics(self) -> torchmetrics.MetricCollection:
        if self.loss_name == "kl":  # how often the head's top class is the teacher's
            accuracy = torchmetrics.classification.MulticlassAccuracy(
                num_classes=self.num_classes, average="micro"
            )
            return torchmetrics.MetricCollection({"agreement": accuracy})
        if self.loss_name == "rkd":  # the head's space is its own: only relations compare
            return torchmetrics.MetricCollection({})
        return torchmetrics.MetricCollection({"cosine": CosineAgreement()})

    def update_metrics(
        self, metrics: torchmetrics.MetricCollection, output: Any, target: torch.Tensor
    ) -> None:
        if self.loss_name == "kl":
            metrics.update(output, target.argmax(dim=1))
        elif len(metrics):
            metrics.update(output, target)

    def describe(self) -> str:
        teacher = self.options.teacher.get("name", "?")
        return f"{super().describe()}, {teacher} teacher, {self.loss_name} loss"


@mtkd.hookimpl
def register_tasks(register: Any) -> None:
    register(NetworkTeacher)
