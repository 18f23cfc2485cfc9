"""Loss weighting: how the per-task losses of a step become the one tensor backpropagated.

A strategy is an ``nn.Module`` registered by a plugin through ``register_weightings``. Its
parameters (learned weights) join the optimizer in their own group, and its parameters and
buffers are saved in every checkpoint, so a resumed run continues exactly. The engine logs
the fixed-weight total as ``loss`` whatever the strategy, so runs stay comparable and early
stopping keeps watching the recipe's weighting of the validation losses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from .samples import NoOptions
from .tasks import Task


class LossWeighting(nn.Module):
    """Base class of a weighting strategy (LibMTL's ``backward(losses)`` shape).

    Subclasses set ``name`` (the recipe's ``trainer.weighting.name``), optionally an
    ``Options`` dataclass for the other keys, and implement :meth:`combine`.
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions

    def __init__(
        self, tasks: Mapping[str, Task], options: Any, shared: Sequence[nn.Parameter]
    ) -> None:
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

    def epoch_end(self, train_losses: Mapping[str, float]) -> None:
        """Called after each epoch with its mean training loss per task (all ranks agree)."""

    def current_weights(self) -> dict[str, float]:
        """The weight each task's loss gets now; logged as ``weight/<task>`` each epoch."""
        return {key: task.weight for key, task in self.tasks.items()}


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


def fixed_total(losses: Mapping[str, torch.Tensor], tasks: Mapping[str, Task]) -> torch.Tensor:
    """The paper's static weighting, sum of each task's recipe ``weight`` x its loss: what the
    engine logs as ``loss`` whatever the strategy."""
    return weighted_sum(losses, {key: task.weight for key, task in tasks.items()})
