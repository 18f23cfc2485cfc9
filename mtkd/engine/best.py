"""Best-model tracking: early stopping's monitor, and the weights of its best epoch."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..context import LoopState
from ..utils.checkpoint import load_best_state, save_weights


class BestModel:
    """Keeps the best epoch's weights in memory (and on disk when a path is given)."""

    def __init__(self, monitor: str, min_delta: float, path: Path | None) -> None:
        self.monitor, self.min_delta, self.path = monitor, min_delta, path
        self.weights: dict[str, torch.Tensor] | None = None

    def value_of(self, record: dict[str, Any]) -> float:
        return float(record.get(self.monitor, math.inf))

    def update(self, state: LoopState, record: dict[str, Any], model: nn.Module) -> bool:
        """Score the epoch just logged; on improvement keep its weights and reset ``stale``."""
        value = self.value_of(record)
        improved = value < state.best_value - self.min_delta
        if improved:
            state.best_value, state.best_epoch, state.stale = value, state.epoch + 1, 0
            self.weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if self.path is not None:
                save_weights(model, self.path)
        else:
            state.stale += 1
        return improved

    def load(self, run_dir: Path, device: torch.device) -> None:
        """On resume: the best weights saved so far, if any (checksum verified)."""
        self.weights = load_best_state(run_dir, device)

    def restore(self, model: nn.Module) -> None:
        if self.weights is not None:
            model.load_state_dict(self.weights)
