"""Head-pose task: yaw, pitch and roll (degrees) regressed from the pooled final features.

Head: global average pool → Linear ``hidden`` → ReLU → (Dropout) → Linear. Two
parameterisations of its last layer:

- ``regression`` (default): one output per angle, trained on the angle divided by a per-angle
  ``scale`` (yaw/90, pitch/40, roll/15 by default, so every target lies in [-1, 1]) with a
  smooth-L1 loss. It is the cheapest head (3 outputs, no bin tables); normalising gives yaw,
  pitch and roll one loss scale (about 0.45 each at initialisation) so none drowns the others,
  smooth-L1 keeps gradients bounded however wrong the head is, and an L1-type loss optimises
  exactly what the metric reports (mean absolute error in degrees). The synthetic heads'
  ranges (yaw ±90°) never wrap around ±180°, so a plain regression has no discontinuity.
- ``bins`` (Hopenet, Ruiz et al. 2018): per angle, a softmax over bins of ``bin_width``
  degrees, cross-entropy on the bin plus ``alpha`` x ``loss`` on the expected angle (softmax
  · bin centres). It buys robustness to noisy labels of real photographs (synthetic angles are
  exact) for ~100 outputs, two loss terms to balance, and an expected angle that only
  approaches the extreme bin centres; offered for comparison.

Whatever the parameterisation the head returns ``{"angles": (B, 3) degrees}`` (plus
``"bin_logits"`` with bins), so metrics, exports and users always see degrees. The default
role is ``teacher``: pose shapes the shared encoder and the default ``distill`` hook removes
the head; ``role: student`` keeps it in the inference model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
import torchmetrics
from torch import nn

import mtkd

PARAMETERISATIONS = ("regression", "bins")
LOSSES = ("smooth_l1", "l1", "mse")
HIDDEN_NORMS = ("none", "batchnorm")


@dataclass
class PoseOptions:
    hidden: int = 128  # width of the hidden layer; 0: a linear head on the pooled features
    dropout: float = 0.0  # before the last layer
    parameterisation: str = "regression"  # regression | bins (Hopenet)
    loss: str = "smooth_l1"  # smooth_l1 | l1 | mse, on normalised angles (bins: expected angle)
    beta: float = 0.1  # smooth-L1: where L2 turns into L1, in normalised units (yaw: 9°)
    scale: list[float] = field(default_factory=lambda: [90.0, 40.0, 15.0])  # degrees per unit
    bin_width: float = 3.0  # bins: degrees per bin (adjusted so bins tile [-scale, scale])
    alpha: float = 1.0  # bins: weight of the expected-angle loss beside the bin cross-entropy
    # none: Linear -> ReLU. batchnorm: Linear -> BatchNorm -> ReLU, which keeps the hidden layer
    # alive when the encoder moves fast (a plain one can die: see pose.md, "A dead head")
    hidden_norm: str = "none"

    def __post_init__(self) -> None:
        mtkd.check_options(
            self,
            [
                ("hidden", self.hidden >= 0, "must be >= 0"),
                ("dropout", 0.0 <= self.dropout < 1.0, "must be in [0, 1)"),
                (
                    "parameterisation",
                    self.parameterisation in PARAMETERISATIONS,
                    _one_of(PARAMETERISATIONS),
                ),
                ("loss", self.loss in LOSSES, _one_of(LOSSES)),
                ("beta", self.beta > 0, "must be > 0"),
                ("scale", all(s > 0 for s in self.scale), "must be positive degrees"),
                (
                    "bin_width",
                    not self.scale or 0 < self.bin_width <= 2 * min(self.scale),
                    "must be in (0, 2 x min(scale)]",
                ),
                ("alpha", self.alpha >= 0, "must be >= 0"),
                ("hidden_norm", self.hidden_norm in HIDDEN_NORMS, _one_of(HIDDEN_NORMS)),
            ],
        )


class PoseHead(nn.Module):
    """Pooled features → angles in degrees; with ``bins``, also the per-angle bin logits."""

    scale: torch.Tensor  # degrees per output unit, per angle
    centres: torch.Tensor | None  # bin centres in degrees, every angle's bins in a row

    def __init__(
        self,
        in_channels: int,
        hidden: int,
        dropout: float,
        scale: Sequence[float],
        bins: Sequence[int] | None,
        hidden_norm: str = "none",
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        width = in_channels
        if hidden > 0:
            norm = [nn.BatchNorm1d(hidden)] if hidden_norm == "batchnorm" else []
            layers += [nn.Linear(in_channels, hidden), *norm, nn.ReLU(inplace=True)]
            width = hidden
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        self.features = nn.Sequential(*layers)
        self.bins = tuple(bins) if bins is not None else None
        self.out = nn.Linear(width, sum(self.bins) if self.bins else len(scale))
        # Non-persistent: both follow from the recipe, so checkpoints hold weights only.
        self.register_buffer("scale", torch.tensor(list(scale)), persistent=False)
        centres = None
        if self.bins:
            grids = [torch.linspace(-s, s, n) for s, n in zip(scale, self.bins, strict=True)]
            centres = torch.cat(grids)
        self.register_buffer("centres", centres, persistent=False)

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        raw = self.out(self.features(features))
        if self.bins is None:
            return {"angles": raw * self.scale}
        assert self.centres is not None
        expected = [
            (logits.softmax(dim=1) * centres).sum(dim=1)
            for logits, centres in zip(
                raw.split(self.bins, dim=1), self.centres.split(self.bins), strict=True
            )
        ]
        return {"angles": torch.stack(expected, dim=1), "bin_logits": raw}


class ComponentMAE(torchmetrics.MeanAbsoluteError):
    """Mean absolute error of one column of (B, K) predictions and targets."""

    def __init__(self, column: int) -> None:
        super().__init__()
        self.column = column

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        super().update(preds[:, self.column], target[:, self.column])


def _one_of(choices: Sequence[str]) -> str:
    return f"must be one of {', '.join(choices)}"


def bin_counts(scale: Sequence[float], width: float) -> tuple[int, ...]:
    """Bins per angle: centres from -scale to +scale about ``width`` apart, ends included, so
    the extreme angles are reachable (yaw ±90° at 3°: 61 bins)."""
    return tuple(max(2, round(2 * s / width) + 1) for s in scale)


class Pose(mtkd.Task[PoseOptions]):
    name = "pose"
    label_key = "pose"
    uses_taps = False
    default_role = "teacher"
    console_metrics = ("mae",)

    def setup(self) -> None:
        """The label must be a vector with one ``scale`` per component; the bins tile it."""
        o, space = self.options, self.label_space
        if space is None or space.kind != "vector":
            raise mtkd.OptionError("", f"label '{self.label_key}' must be a vector of angles")
        components = f"one per component of '{self.label_key}' ({', '.join(space.names)})"
        mtkd.check_options(o, [("scale", len(o.scale) == space.num_classes, f"needs {components}")])
        self.scale = tuple(float(s) for s in o.scale)
        bins = o.parameterisation == "bins"
        self.bins = bin_counts(self.scale, o.bin_width) if bins else None

    def build_head(self, features: mtkd.FeatureInfo) -> nn.Module:
        o = self.options
        return PoseHead(
            features.final_channels, o.hidden, o.dropout, self.scale, self.bins, o.hidden_norm
        )

    def _angle_loss(self, degrees: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``loss`` between normalised angles: one scale for every angle range."""
        scale = degrees.new_tensor(self.scale)
        pred, true = degrees / scale, target / scale
        if self.options.loss == "l1":
            return F.l1_loss(pred, true)
        if self.options.loss == "mse":
            return F.mse_loss(pred, true)
        return F.smooth_l1_loss(pred, true, beta=self.options.beta)

    def loss(self, output: Any, target: torch.Tensor, head: nn.Module) -> torch.Tensor:
        regression = self._angle_loss(output["angles"], target)
        if self.bins is None:
            return regression
        scale = target.new_tensor(self.scale)
        steps = target.new_tensor(
            [2 * s / (n - 1) for s, n in zip(self.scale, self.bins, strict=True)]
        )
        counts = torch.tensor(self.bins, device=target.device)
        index = ((target + scale) / steps).round().long().clamp(min=0)
        index = torch.minimum(index, counts - 1)  # labels beyond ±scale go to the end bins
        cross_entropy = torch.stack(
            [
                F.cross_entropy(logits, index[:, i])
                for i, logits in enumerate(output["bin_logits"].split(self.bins, dim=1))
            ]
        ).mean()
        return cross_entropy + self.options.alpha * regression

    def predictions(self, output: Any) -> torch.Tensor:
        """Angles in degrees (B, 3), whatever the parameterisation."""
        return output["angles"] if isinstance(output, dict) else output

    def metrics(self) -> torchmetrics.MetricCollection:
        names = self.label_space.names if self.label_space else ()
        metrics: dict[str, torchmetrics.Metric | torchmetrics.MetricCollection] = {
            f"{name}_mae": ComponentMAE(i) for i, name in enumerate(names)
        }
        metrics["mae"] = torchmetrics.MeanAbsoluteError()  # equal counts: the per-angle mean
        # No compute groups: they merge metrics whose states match after the first update,
        # which per-angle metrics with equal errors would do, and then update only one of them.
        return torchmetrics.MetricCollection(metrics, compute_groups=False)


@mtkd.hookimpl
def register_tasks(register: Any) -> None:
    register(Pose)
