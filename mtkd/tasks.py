"""The task contract: what a task-head plugin declares and implements.

A task is one small class: a registry ``name``, the sample key holding its label, whether its
head reads the encoder's multi-scale taps or its pooled final features, an ``Options``
dataclass for its recipe keys (checked in its ``__post_init__``), and two required methods
(head, loss) beside optional ones (setup, metrics, predictions, …). The
engine handles partial labels: ``loss`` and ``update_metrics`` only ever see the samples of a
batch that carry ``label_key``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import nn

from .options import Configurable, OptionsT
from .samples import LabelSpace

if TYPE_CHECKING:
    # torchmetrics imports matplotlib (and torchvision, scipy) when it loads: only a task
    # that has metrics needs it, not ``import mtkd``
    import torchmetrics

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


class Task(Configurable[OptionsT]):
    """Base class of a task-head plugin. Subclass it, set the class variables, register it.

    The generic parameter is the dataclass of the task's recipe options
    (``class HeadYaw(mtkd.Task[YawOptions])``): it types ``self.options`` and sets the
    ``Options`` class variable the engine parses the recipe with.

    Override :meth:`build_head` and :meth:`loss` (required); :meth:`setup`, :meth:`metrics`,
    :meth:`predictions`, :meth:`update_metrics`, :meth:`summarize`, :meth:`describe`,
    :meth:`class_map`, the :attr:`output_space` property and the :attr:`console_metrics`
    class variable are optional. Do not override ``__init__``: options check themselves in
    their dataclass's ``__post_init__`` (raise :class:`mtkd.OptionError`), and what needs
    the label space goes in :meth:`setup`; the engine adds the recipe key to the message
    either way.
    """

    name: ClassVar[str] = ""  # the registry name recipes use (a task entry's key or ``type``)
    # the sample key of the label; a task whose label depends on its recipe key (a teacher
    # network's targets) overrides :meth:`label_key_for` instead
    label_key: str = ""
    # the head's input: False, the final feature map (B, C, h, w); True, the list of tap
    # maps, shallow to deep
    uses_taps: ClassVar[bool] = False
    default_role: ClassVar[Role] = "student"  # unless the recipe's ``role`` says otherwise
    # the metrics the epoch's console line shows beside the loss (``trainer.console:
    # compact``); every metric still goes to metrics.jsonl and the loggers
    console_metrics: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        key: str,
        options: OptionsT,
        *,
        role: Role,
        weight: float,
        label_space: LabelSpace | None,
    ) -> None:
        """Called by the engine with the parsed options; do not override (use :meth:`setup`)."""
        self.key = key  # the task's name in the recipe (usually equal to ``name``)
        self.label_key = self.label_key_for(key)
        self.options = options
        self.role: Role = role
        self.weight = weight
        self.label_space = label_space  # the data's label (what ``label_key`` holds)
        self.setup()

    @classmethod
    def label_key_for(cls, key: str) -> str:
        """The sample key this task reads when its recipe key is ``key``: ``label_key``."""
        return cls.label_key

    def setup(self) -> None:
        """Check what depends on the label space and derive what the head and loss need.

        Called once, at the end of construction. Raise :class:`mtkd.OptionError` naming the
        option at fault (``""`` for the task itself); the engine reports it as
        ``tasks.<key>.<option>``."""

    @property
    def output_space(self) -> LabelSpace | None:
        """The classes the head outputs: the label space unless the task derives its own (a
        head that bins a vector label into named classes). Export and prediction use it."""
        return self.label_space

    @property
    def num_classes(self) -> int:
        """The size of :attr:`output_space`; an error naming the task when it has none."""
        space = self.output_space
        if space is None:
            raise ValueError(f"task '{self.key}' needs the label space of '{self.label_key}'")
        return space.num_classes

    def build_head(self, features: FeatureInfo) -> nn.Module:
        """The head module; it receives the list of taps if ``uses_taps`` else the final map."""
        raise NotImplementedError

    def loss(self, output: Output, target: torch.Tensor, head: nn.Module) -> torch.Tensor:
        """Mean loss over the given (labelled) samples. ``head`` is the module
        :meth:`build_head` made, for losses that own parameters (ArcFace's class centres)."""
        raise NotImplementedError

    def metrics(self) -> torchmetrics.MetricCollection:
        """Fresh metric objects; their names become ``<task>/<metric>`` in results."""
        from torchmetrics import MetricCollection

        return MetricCollection({})

    def predictions(self, output: Output) -> torch.Tensor:
        """What the metrics consume (logits by default)."""
        if isinstance(output, dict):
            return output["logits"]
        return output

    def class_map(self, output: Output) -> torch.Tensor | None:
        """The predicted class of every pixel (B, H, W), which the prediction sheets
        (``predictions-<task>.png``) and the loggers' images draw beside the true label map;
        ``None``: the output is not a class map, nothing is drawn.

        The default draws only what is one for sure: :meth:`predictions` of shape
        (B, classes, H, W) with one channel per class of a ``class`` :attr:`output_space`
        (its arg-max). A task whose label is per-pixel but whose output is something else (a
        point, a vector) draws nothing without overriding this; override it to draw a map
        the default cannot recognise."""
        space = self.output_space
        if space is None or space.kind != "class":
            return None
        pred = self.predictions(output)
        if not isinstance(pred, torch.Tensor) or pred.ndim != 4:
            return None
        return pred.argmax(1) if pred.shape[1] == space.num_classes else None

    def update_metrics(
        self, metrics: torchmetrics.MetricCollection, output: Output, target: torch.Tensor
    ) -> None:
        """Feed one batch (its labelled samples) to the metrics: by default
        ``metrics.update(self.predictions(output), target)``."""
        if len(metrics):
            metrics.update(self.predictions(output), target)

    def summarize(self, metrics: torchmetrics.MetricCollection) -> dict[str, Any]:
        """Final values of the updated metrics; override to add derived figures."""
        return {name: value for name, value in metrics.compute().items()}

    def describe(self) -> str:
        """The one-line description a run prints."""
        return f"{self.key} ({self.name}, {self.role}, weight {self.weight:g})"
