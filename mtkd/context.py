"""What lifecycle hooks see of a training run (``on_train_start``, ``on_step_end``,
``on_epoch_end``, ``on_train_end``): part of the plugin author's contract."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import DictConfig

from .engine.state import LoopState

if TYPE_CHECKING:
    from .model.multitask import MultiTaskModel
    from .weighting import LossWeighting


@dataclass
class TrainContext:
    """The live model, optimizer and recipe, and where training stands.

    ``state`` is exactly what a checkpoint saves and a resume restores; ``epoch``,
    ``best_epoch`` and ``best_value`` read from it. A hook may set ``stop_requested`` to end
    training after the current epoch.
    """

    cfg: DictConfig
    model: MultiTaskModel
    optimizer: torch.optim.Optimizer
    device: torch.device
    run_dir: Path | None
    weighting: LossWeighting | None = None
    rank: int = 0  # this process's rank under torchrun (0 in a single process)
    world_size: int = 1
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per epoch
    state: LoopState = field(default_factory=LoopState)
    stopped_early: bool = False
    stop_requested: bool = False

    @property
    def epoch(self) -> int:
        """The 0-based epoch running (the last one run, once training stopped)."""
        return self.state.epoch

    @property
    def best_epoch(self) -> int:
        """1-based epoch of the best monitored value so far; -1 before the first."""
        return self.state.best_epoch

    @property
    def best_value(self) -> float:
        return self.state.best_value
