"""Loss weighting: how the per-task losses of a step become the one tensor backpropagated.

A strategy is an ``nn.Module`` registered by a plugin through ``register_weightings``. Its
parameters (learned weights) join the optimizer in their own group, and its parameters and
buffers are saved in every checkpoint, so a resumed run continues exactly. The engine logs
the fixed-weight total as ``loss`` whatever the strategy, so runs stay comparable and early
stopping keeps watching the recipe's weighting of the validation losses.

Most strategies only say how losses combine (:meth:`LossWeighting.combine`); a gradient
aggregator (``aggregates_gradients``) instead overrides :meth:`LossWeighting.backward` to set
the gradients itself from the task gradients on the encoder's features.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import torch
from torch import nn

from .config import parse_options
from .options import Configurable, OptionsT
from .tasks import Task

if TYPE_CHECKING:
    from torch.amp import GradScaler


@dataclass
class EncoderOutputs:
    """The encoder's outputs (taps, then final features) of one step, for a strategy that
    ``aggregates_gradients``. The heads read ``cut``, leaf copies of ``outputs``, so a loss
    reaches the encoder only through the strategy's own chain rule: each task's gradient with
    respect to ``cut`` (through its head alone), carried back through ``outputs``."""

    outputs: list[torch.Tensor] = field(default_factory=list)  # in the encoder's graph
    cut: list[torch.Tensor] = field(default_factory=list)  # what the heads read


class LossWeighting(nn.Module, Configurable[OptionsT]):
    """Base class of a weighting strategy (LibMTL's ``backward(losses)`` shape).

    Subclasses set ``name`` (the recipe's ``trainer.weighting.name``), optionally name a
    dataclass for the other keys as the generic parameter (``LossWeighting[DwaOptions]``,
    which sets ``Options``), and implement :meth:`combine`.
    """

    name: ClassVar[str] = ""  # the registry name: ``trainer.weighting.name``
    # True for a strategy whose backward() differentiates through the encoder's outputs
    # itself (a gradient aggregator): the engine then cuts the graph there (EncoderOutputs),
    # runs the forward without DDP's gradient hooks, and averages over ranks only the
    # gradients outside ``shared`` (the heads'); backward() must set ``shared``'s, identical
    # on every rank.
    aggregates_gradients: ClassVar[bool] = False

    @classmethod
    def parse_options(cls, raw: Mapping[str, Any], key: str) -> Any:
        """The recipe's options (``trainer.weighting`` less ``name``) as this strategy's
        ``Options``; a strategy whose options depend on one of them overrides it."""
        return parse_options(cls.Options, raw, key)

    def __init__(
        self, tasks: Mapping[str, Task], options: OptionsT, shared: Sequence[nn.Parameter]
    ) -> None:
        """``tasks`` by recipe key, the parsed options, and the encoder's parameters
        (``shared``), which gradient-based strategies measure."""
        super().__init__()
        self.keys = list(tasks)
        self.tasks = dict(tasks)
        self.options = options
        self.shared = list(shared)  # the encoder's parameters, for gradient-based strategies

    def combine(
        self, losses: Mapping[str, torch.Tensor], counts: Mapping[str, int]
    ) -> torch.Tensor:
        """The scalar to backpropagate this step.

        ``counts[k]`` is how many samples of the batch carry task ``k``'s label; a task with
        none has a zero loss that only keeps its head in the graph. A strategy with learned
        weights may set their ``.grad`` here (the engine has already zeroed gradients).
        """
        raise NotImplementedError

    def backward(
        self,
        losses: Mapping[str, torch.Tensor],
        counts: Mapping[str, int],
        scaler: GradScaler | None = None,
        features: EncoderOutputs | None = None,
    ) -> None:
        """Fill this step's ``.grad`` fields: by default, backpropagate :meth:`combine`.

        ``scaler`` is fp16's GradScaler: every gradient must come out multiplied by its scale
        (the optimizer step unscales them). ``features`` are the encoder's outputs this step,
        given only to a strategy that ``aggregates_gradients``.
        """
        combined = self.combine(losses, counts)
        if scaler is None:
            combined.backward()
            return
        scale = scaler.get_scale()
        for p in self.parameters():  # gradients a strategy set itself (GradNorm) are
            if p.grad is not None:  # unscaled: scale them as backward scales the rest
                p.grad.mul_(scale)
        scaler.scale(combined).backward()

    def epoch_end(self, train_losses: Mapping[str, float]) -> None:
        """Called after each epoch with its mean training loss per task (all ranks agree)."""

    def current_weights(self) -> dict[str, float]:
        """The weight each task's loss gets now; logged as ``weight/<task>`` each epoch."""
        return {key: task.weight for key, task in self.tasks.items()}

    def epoch_metrics(self) -> dict[str, float]:
        """Anything else the strategy measured over the epoch just ended (called after
        :meth:`epoch_end`), added to that epoch's record in ``metrics.jsonl``."""
        return {}


class FixedWeighting(LossWeighting):
    """The paper's static weighting: the sum of each task's recipe ``weight`` x its loss."""

    name = "fixed"

    def combine(
        self, losses: Mapping[str, torch.Tensor], counts: Mapping[str, int]
    ) -> torch.Tensor:
        return fixed_total(losses, self.tasks)


def weighted_sum(
    losses: Mapping[str, torch.Tensor], weights: Mapping[str, float | torch.Tensor]
) -> torch.Tensor:
    """Sum of weight x loss over the tasks in ``losses``."""
    total: Any = 0.0
    for key, loss in losses.items():
        total = total + weights[key] * loss
    assert isinstance(total, torch.Tensor)
    return total


LossT = TypeVar("LossT", float, torch.Tensor)


def fixed_total(losses: Mapping[str, LossT], tasks: Mapping[str, Task]) -> LossT:
    """The one rule for every ``loss`` mtkd logs or reports (docs/evaluation.md): the sum over
    the tasks in ``losses`` of the recipe's ``weight`` x the task's mean loss over the samples
    that carry its label, whatever strategy the run trains with. A step gives it the batch's
    means (a task without a labelled sample contributes its zero); an epoch, a validation or
    a test set the means over all their labelled samples (such a task is left out)."""
    if not losses:
        raise ValueError("no task loss to weight")
    terms = [tasks[key].weight * loss for key, loss in losses.items()]
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total


def weighted_losses(means: Mapping[str, float], tasks: Mapping[str, Task]) -> dict[str, float]:
    """What every training epoch, validation and test reports: ``loss``, the rule over every
    task with a mean, and, when some task is a teacher, ``student_loss``, the rule over the
    students alone (what the distilled model's ``loss`` is comparable to)."""
    out = {"loss": fixed_total(means, tasks)} if means else {}
    students = {k: m for k, m in means.items() if tasks[k].role == "student"}
    if students and any(task.role == "teacher" for task in tasks.values()):
        out["student_loss"] = fixed_total(students, tasks)
    return out
