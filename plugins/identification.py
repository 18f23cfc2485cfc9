"""Identification task: who is in the image.

The paper's head: global average pool → Linear 128 → ReLU → Linear N (softmax via the
cross-entropy loss). The 128-d layer is the embedding used for verification.

``loss`` selects the classifier on top of that embedding:

- ``softmax`` (default, the paper): the Linear N layer and cross-entropy (``label_smoothing``).
- ``arcface`` (Deng et al. 2019), ``cosface`` (Wang et al. 2018) and ``subcenter_arcface``
  (Deng et al. 2020): additive-margin softmax losses from pytorch-metric-learning. Each owns
  the class-centre matrix ``W`` (embedding_dim x N, x ``sub_centers`` for sub-center ArcFace)
  and lives inside the head (``head.margin_loss``), so ``W`` is trained, checkpointed and
  exported with it. Their ``logits`` are ``scale`` x the cosine between the normalised
  embedding and each normalised class centre (the best sub-centre's, with sub-centres),
  without the margin, which is a training-time penalty only; top-1/top-5 and ``mtkd predict``
  read them like the softmax head's logits.

``margin`` follows pytorch-metric-learning's conventions: an angle in **degrees** for
ArcFace and sub-center ArcFace (default 28.6°, i.e. 0.5 rad, the ArcFace paper's m), a cosine
offset for CosFace (default 0.35). ``scale`` (s, default 64) multiplies the cosines; options a
loss does not use are ignored (``label_smoothing``: softmax only; ``margin``/``scale``: margin
losses only; ``sub_centers``: sub-center ArcFace only). Whatever the loss, the head returns
``{"logits", "embedding"}`` and the embedding is the ReLU'd ``embedding_dim`` layer.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
import torchmetrics
from torch import nn

import mtkd

LOSSES = ("softmax", "arcface", "cosface", "subcenter_arcface")
# pytorch-metric-learning's defaults: ArcFace's margin is in degrees (28.6° = 0.5 rad),
# CosFace's is subtracted from the target cosine.
DEFAULT_MARGIN = {"arcface": 28.6, "subcenter_arcface": 28.6, "cosface": 0.35}
ANGULAR = ("arcface", "subcenter_arcface")


@dataclass
class IdentificationOptions:
    embedding_dim: int = 128
    label_smoothing: float = 0.0  # softmax only
    loss: str = "softmax"  # softmax (the paper) | arcface | cosface | subcenter_arcface
    # Margin losses: None takes the loss's default, 28.6 (degrees) for arcface and
    # subcenter_arcface, 0.35 (cosine) for cosface.
    margin: float | None = None
    scale: float = 64.0  # margin losses: s, the factor on the cosines
    sub_centers: int = 3  # subcenter_arcface: centres per class (the paper's K)
    # none (the paper): Linear -> ReLU. batchnorm: Linear -> BatchNorm -> ReLU, which keeps
    # the embedding alive beside a loud teacher (see "A dead embedding" in identification.md).
    embedding_norm: str = "none"

    def __post_init__(self) -> None:
        angular_margin = self.loss not in ANGULAR or self.margin is None or self.margin < 180
        mtkd.check_options(
            self,
            [
                ("embedding_dim", self.embedding_dim >= 1, "must be >= 1"),
                ("label_smoothing", 0.0 <= self.label_smoothing <= 1.0, "must be in [0, 1]"),
                ("loss", self.loss in LOSSES, f"must be one of {', '.join(LOSSES)}"),
                ("margin", self.margin is None or self.margin >= 0, "must be >= 0"),
                ("scale", self.scale > 0, "must be > 0"),
                ("sub_centers", self.sub_centers >= 1, "must be >= 1"),
                (
                    "embedding_norm",
                    self.embedding_norm in EMBEDDING_NORMS,
                    f"must be one of {', '.join(EMBEDDING_NORMS)}",
                ),
                ("margin", angular_margin, "must be < 180 (degrees)"),
            ],
        )


EMBEDDING_NORMS = ("none", "batchnorm")


class EmbeddingLayer(nn.Module):
    """Pool -> Linear -> (BatchNorm) -> ReLU: the 128-d embedding both heads share.

    Without the norm the layer can die: the pooled features are non-negative, so Adam can push
    every unit's pre-activation below zero for every image. Batch-normalising the
    pre-activation centres each unit on its batch mean, so about half the images keep it on.
    """

    def __init__(self, in_channels: int, embedding_dim: int, norm: str = "none") -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.embed = nn.Linear(in_channels, embedding_dim)
        self.norm = nn.BatchNorm1d(embedding_dim) if norm == "batchnorm" else nn.Identity()

    def embedding(self, features: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.embed(self.pool(features).flatten(1))))


class IdentificationHead(EmbeddingLayer):
    def __init__(
        self, in_channels: int, embedding_dim: int, num_classes: int, norm: str = "none"
    ) -> None:
        super().__init__(in_channels, embedding_dim, norm)
        self.classify = nn.Linear(embedding_dim, num_classes)

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        embedding = self.embedding(features)
        return {"logits": self.classify(embedding), "embedding": embedding}


@contextlib.contextmanager
def _full_precision(device: torch.device) -> Iterator[None]:
    """Autocast off on ``device`` while inside (a no-op when it is not on)."""
    if torch.is_autocast_enabled(device.type):
        with torch.autocast(device.type, enabled=False):
            yield
    else:
        yield


class MarginIdentificationHead(EmbeddingLayer):
    """Same embedding as :class:`IdentificationHead`; the classifier is a margin loss's ``W``.

    ``margin_loss`` is a pytorch-metric-learning ``LargeMarginSoftmaxLoss`` subclass (ArcFace,
    CosFace, sub-center ArcFace): a module, so its ``W`` moves with ``.to()``, is in
    ``state_dict()`` and gets gradients from :meth:`loss`.
    """

    def __init__(
        self, in_channels: int, embedding_dim: int, margin_loss: nn.Module, norm: str = "none"
    ) -> None:
        super().__init__(in_channels, embedding_dim, norm)
        self.margin_loss: Any = margin_loss  # a PML loss (untyped); registered as a submodule

    def _like_centres(self, embedding: torch.Tensor) -> torch.Tensor:
        # The losses cast W.data to the embedding's dtype and device in place; handing them
        # an embedding that already matches W (float32 under autocast too) keeps W intact.
        w = self.margin_loss.W
        return embedding.to(device=w.device, dtype=w.dtype)

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        embedding = self.embedding(features)
        with _full_precision(embedding.device):
            logits = self.class_logits(self._like_centres(embedding))
        return {"logits": logits, "embedding": embedding}

    def class_logits(self, embedding: torch.Tensor) -> torch.Tensor:
        """``scale`` x cos(embedding, class centre), without the margin; with sub-centres, the
        closest sub-centre of each class. The loss's own ``get_logits``, written out with plain
        tensor ops so that tracing and ONNX export see no Python-side shape checks."""
        loss = self.margin_loss
        w = F.normalize(loss.W, dim=0)  # (embedding_dim, classes x sub-centres)
        cosine = F.normalize(embedding, dim=1) @ w
        sub_centers = int(getattr(loss, "sub_centers", 1))
        if sub_centers > 1:  # W's columns are class-major: class c owns c*K .. c*K + K-1
            cosine = cosine.view(-1, int(loss.num_classes), sub_centers).amax(dim=2)
        return cosine * float(loss.scale)

    def loss(self, embedding: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The margin loss of these (labelled) embeddings, in full precision."""
        with _full_precision(embedding.device):
            loss: torch.Tensor = self.margin_loss(self._like_centres(embedding), target)
        return loss


def margin_loss_module(
    loss: str, num_classes: int, embedding_dim: int, margin: float, scale: float, sub_centers: int
) -> nn.Module:
    """The pytorch-metric-learning loss named ``loss`` (imported here: softmax runs skip it)."""
    from pytorch_metric_learning import losses

    common: dict[str, Any] = {
        "num_classes": num_classes,
        "embedding_size": embedding_dim,
        "margin": margin,
        "scale": scale,
    }
    if loss == "arcface":
        module = losses.ArcFaceLoss(**common)
    elif loss == "cosface":
        module = losses.CosFaceLoss(**common)
    elif loss == "subcenter_arcface":
        module = losses.SubCenterArcFaceLoss(**common, sub_centers=sub_centers)
    else:
        raise ValueError(f"not a margin loss: {loss!r}")
    assert isinstance(module, nn.Module)
    return module


class Identification(mtkd.Task[IdentificationOptions]):
    name = "identification"
    label_key = "identity"
    console_metrics = ("top1",)

    def setup(self) -> None:
        o = self.options
        if o.loss in ANGULAR and o.margin is not None and 0 < o.margin < 1:
            warnings.warn(
                f"tasks.{self.key}.margin: {o.margin} is in degrees for {o.loss} "
                f"(pytorch-metric-learning's convention); {o.margin} rad would be "
                f"{math.degrees(o.margin):.1f}",
                UserWarning,
                stacklevel=2,
            )

    @property
    def margin(self) -> float | None:
        """The margin in effect (the loss's default when the recipe leaves it unset)."""
        o = self.options
        if o.loss == "softmax":
            return None
        return float(o.margin) if o.margin is not None else DEFAULT_MARGIN[o.loss]

    def build_head(self, features: mtkd.FeatureInfo) -> nn.Module:
        o = self.options
        if o.loss == "softmax":
            return IdentificationHead(
                features.final_channels, o.embedding_dim, self.num_classes, o.embedding_norm
            )
        margin = self.margin
        assert margin is not None
        module = margin_loss_module(
            o.loss, self.num_classes, o.embedding_dim, margin, float(o.scale), o.sub_centers
        )
        return MarginIdentificationHead(
            features.final_channels, o.embedding_dim, module, o.embedding_norm
        )

    def loss(self, output: Any, target: torch.Tensor, head: nn.Module) -> torch.Tensor:
        if isinstance(head, MarginIdentificationHead):  # the margin loss owns the centres W
            return head.loss(output["embedding"], target)
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
        metrics[ACTIVE] = ActiveUnits(self.options.embedding_dim)
        metrics[PREDICTED] = PredictedClasses(n)
        return torchmetrics.MetricCollection(metrics, compute_groups=False)

    def update_metrics(
        self, metrics: torchmetrics.MetricCollection, output: Any, target: torch.Tensor
    ) -> None:
        logits = self.predictions(output)
        for name, metric in metrics.items():
            if name == ACTIVE:
                metric.update(output["embedding"])
            elif name == PREDICTED:
                metric.update(logits)
            else:
                metric.update(logits, target)

    def describe(self) -> str:
        o = self.options
        if o.loss == "softmax":
            return super().describe()
        unit = "°" if o.loss in ANGULAR else ""
        extra = f", {o.sub_centers} sub-centres" if o.loss == "subcenter_arcface" else ""
        return (
            f"{self.key} ({self.name}, {self.role}, weight {self.weight:g}, "
            f"{o.loss} margin {self.margin:g}{unit} scale {o.scale:g}{extra})"
        )


class _ShareEverHit(torchmetrics.Metric):
    """Share of slots (embedding units, classes) hit by at least one sample so far.

    One mechanism for both health checks: a slot counts once any sample hits it, and ranks
    combine by max, so the share is the same whether the data were sharded or not.
    """

    full_state_update = False
    hit: torch.Tensor

    def __init__(self, slots: int) -> None:
        super().__init__()
        self.add_state("hit", default=torch.zeros(slots), dist_reduce_fx="max")

    def _hits(self, batch: torch.Tensor) -> torch.Tensor:
        """(slots,) bool: which slots this batch hits."""
        raise NotImplementedError

    def update(self, batch: torch.Tensor) -> None:
        if batch.shape[0]:
            self.hit = torch.maximum(self.hit, self._hits(batch).float())

    def compute(self) -> torch.Tensor:
        return self.hit.mean()


class ActiveUnits(_ShareEverHit):
    """Share of embedding units positive for at least one sample.

    0 means every ReLU of the embedding layer is dead: the head outputs constant logits, its
    loss sits at log(N) and no gradient reaches it again (Adam can push all of the layer's
    weights negative against the non-negative pooled features).
    """

    def _hits(self, batch: torch.Tensor) -> torch.Tensor:
        return (batch > 0).any(0)


class PredictedClasses(_ShareEverHit):
    """Share of the classes that are the top-1 prediction for at least one sample.

    Catches what ``ActiveUnits`` cannot: an encoder whose features collapsed (a plain VGG-19
    from random weights at Adam 1e-3 does) maps every image to nearly one embedding; units
    stay positive through their bias, yet the network names one class for every image and its
    accuracy sits at chance. A healthy network names many.
    """

    def _hits(self, batch: torch.Tensor) -> torch.Tensor:
        return F.one_hot(batch.argmax(1), batch.shape[1]).any(0)


ACTIVE = "embedding_active"
PREDICTED = "classes_predicted"
COLLAPSE_EPOCHS = 3  # epochs in a row naming one class before the collapse is warned about


@mtkd.hookimpl
def register_tasks(register: Any) -> None:
    register(Identification)


def _collapsed(record: dict[str, Any], key: str, classes: int) -> bool:
    share = record.get(f"val/{key}/{PREDICTED}")
    return share is not None and round(share * classes) <= 1


def collapsed_epochs(history: list[dict[str, Any]], key: str, classes: int) -> int:
    """How many epochs in a row, up to the last one, named one class for every image."""
    streak = 0
    for record in reversed(history):
        if not _collapsed(record, key, classes):
            break
        streak += 1
    return streak


@mtkd.hookimpl
def on_epoch_end(context: Any, epoch: int, metrics: dict[str, Any]) -> None:
    """Say so when an identification embedding died or collapsed: more training cannot help.

    A collapse is only reported once it lasted ``COLLAPSE_EPOCHS`` epochs: after the first
    epoch a healthy network often still names one class for everything."""
    history = list(getattr(context, "history", None) or [])
    if not history or history[-1] is not metrics:
        history.append(metrics)
    for key, task in context.model.tasks.items():
        if not isinstance(task, Identification):
            continue
        if metrics.get(f"val/{key}/{ACTIVE}") == 0.0:
            warnings.warn(
                f"epoch {epoch}: every unit of task '{key}''s embedding layer is inactive on "
                "the validation set (dead ReLUs): its loss is stuck at log(classes); lower "
                "trainer.lr or raise its weight",
                stacklevel=1,
            )
        elif collapsed_epochs(history, key, task.num_classes) == COLLAPSE_EPOCHS:
            warnings.warn(
                f"epoch {epoch}: task '{key}' has named one class for every validation image "
                f"for {COLLAPSE_EPOCHS} epochs (the encoder's features collapsed): its accuracy "
                "is at chance; lower trainer.lr, or use an encoder with normalisation layers "
                "or pretrained weights",
                stacklevel=1,
            )
