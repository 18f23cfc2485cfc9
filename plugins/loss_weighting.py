"""Adaptive loss weighting strategies: uncertainty (Kendall et al. 2018), dynamic weight
averaging (Liu et al. 2019) and GradNorm (Chen et al. 2018).

Each replaces the recipe's static task weights (``fixed``, the core default) while training;
select one with ``trainer.weighting.name``. They follow LibMTL's definitions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

import mtkd
from mtkd import LossWeighting, weighted_sum


def _labelled(counts: Mapping[str, int], keys: list[str]) -> torch.Tensor:
    return torch.tensor([float(counts[k] > 0) for k in keys])


class UncertaintyWeighting(LossWeighting):
    """Learned homoscedastic uncertainty: each task's loss L gets 1/(2 sigma^2) L + log sigma.

    The log-variance s = log sigma^2 is learned, so a noisier task (whose loss stays high)
    grows its sigma and gets a smaller weight exp(-s)/2.
    """

    name = "uncertainty"

    def __init__(self, tasks: Any, options: Any, shared: Any) -> None:
        super().__init__(tasks, options, shared)
        self.log_vars = nn.Parameter(torch.zeros(len(self.keys)))

    def combine(
        self, losses: Mapping[str, torch.Tensor], counts: Mapping[str, int]
    ) -> torch.Tensor:
        s = self.log_vars
        stacked = torch.stack([losses[k] for k in self.keys])
        # a task without labels in this batch must not pull its sigma down through log sigma
        regulariser = 0.5 * s * _labelled(counts, self.keys).to(s.device)
        return (0.5 * torch.exp(-s) * stacked + regulariser).sum()

    def current_weights(self) -> dict[str, float]:
        weights = 0.5 * torch.exp(-self.log_vars.detach())
        return {k: float(w) for k, w in zip(self.keys, weights, strict=True)}


@dataclass
class DwaOptions:
    temperature: float = 2.0  # T: higher values flatten the weights towards equal


class DynamicWeightAveraging(LossWeighting[DwaOptions]):
    """DWA: a task whose loss fell less over the last epoch gets more weight the next.

    w_k = K softmax_k(r_k / T), r_k = L_k(t-1) / L_k(t-2) from epoch-mean training losses;
    the first two epochs use equal weights.
    """

    name = "dwa"
    history: torch.Tensor  # buffers: saved in checkpoints, so a resumed run continues exactly
    epochs_seen: torch.Tensor
    weights: torch.Tensor

    def __init__(self, tasks: Any, options: DwaOptions, shared: Any) -> None:
        super().__init__(tasks, options, shared)
        if options.temperature <= 0:
            raise mtkd.RecipeError(
                f"trainer.weighting.temperature: must be > 0, got {options.temperature}"
            )
        k = len(self.keys)
        self.register_buffer("history", torch.zeros(2, k))  # losses of epochs t-2 and t-1
        self.register_buffer("epochs_seen", torch.zeros((), dtype=torch.long))
        self.register_buffer("weights", torch.ones(k))

    def combine(
        self, losses: Mapping[str, torch.Tensor], counts: Mapping[str, int]
    ) -> torch.Tensor:
        return weighted_sum(losses, dict(zip(self.keys, self.weights, strict=True)))

    def epoch_end(self, train_losses: Mapping[str, float]) -> None:
        previous = self.history[1].clone()
        current = torch.tensor(
            [train_losses.get(k, float(p)) for k, p in zip(self.keys, previous, strict=True)],
            device=self.history.device,
        )
        self.history.copy_(torch.stack([previous, current]))
        self.epochs_seen += 1
        if int(self.epochs_seen) >= 2:
            ratio = self.history[1] / self.history[0].clamp_min(1e-12)
            self.weights.copy_(len(self.keys) * torch.softmax(ratio / self.options.temperature, 0))

    def current_weights(self) -> dict[str, float]:
        return {k: float(w) for k, w in zip(self.keys, self.weights, strict=True)}


@dataclass
class GradNormOptions:
    alpha: float = 1.5  # restoring force: higher pulls slow-training tasks harder


class GradNorm(LossWeighting[GradNormOptions]):
    """GradNorm: learned weights that balance each task's gradient norm on the shared encoder.

    Per step, G_k = w_k ||grad_W L_k|| over the encoder's parameters W and the target is
    mean(G) (r_k)^alpha, r_k the task's loss ratio to its first-step loss relative to the
    mean ratio; the weights descend sum |G_k - target_k| and are renormalised to sum to K.
    Costs one extra backward pass through the encoder per task.
    """

    name = "gradnorm"
    initial_losses: torch.Tensor

    def __init__(self, tasks: Any, options: GradNormOptions, shared: Any) -> None:
        super().__init__(tasks, options, shared)
        k = len(self.keys)
        self.task_weights = nn.Parameter(torch.ones(k))
        self.register_buffer("initial_losses", torch.full((k,), math.nan))

    @torch.no_grad()
    def _renormalise(self) -> None:
        w = self.task_weights.clamp_min(1e-6)
        self.task_weights.copy_(len(self.keys) * w / w.sum())

    def combine(
        self, losses: Mapping[str, torch.Tensor], counts: Mapping[str, int]
    ) -> torch.Tensor:
        self._renormalise()
        w = self.task_weights
        active = [i for i, k in enumerate(self.keys) if counts[k] > 0]
        stacked = torch.stack([losses[k] for k in self.keys])
        params = [p for p in self.shared if p.requires_grad]
        if len(active) > 1 and params:
            self._weight_gradients(stacked, active, params)
        return (w.detach() * stacked).sum()

    def _weight_gradients(
        self, stacked: torch.Tensor, active: list[int], params: list[nn.Parameter]
    ) -> None:
        """Set ``task_weights.grad`` from the GradNorm objective (the model's grads untouched)."""
        norms = []
        for i in active:
            grads = torch.autograd.grad(stacked[i], params, retain_graph=True, allow_unused=True)
            squares = [g.detach().float().pow(2).sum() for g in grads if g is not None]
            norms.append(torch.stack(squares).sum().sqrt() if squares else stacked.new_zeros(()))
        grad_norms = torch.stack(norms)  # ||grad L_k||, constants for the weight update
        losses = stacked.detach()[active].float()
        initial = self.initial_losses
        fresh = torch.isnan(initial[active])
        initial[active] = torch.where(fresh, losses, initial[active])
        ratio = losses / initial[active].clamp_min(1e-12)
        relative = ratio / ratio.mean().clamp_min(1e-12)
        w = self.task_weights.detach()[active]
        scaled = w * grad_norms
        target = scaled.mean() * relative.pow(self.options.alpha)
        grad = torch.zeros_like(self.task_weights)
        grad[active] = torch.sign(scaled - target) * grad_norms  # d/dw_k of |w_k g_k - target_k|
        self.task_weights.grad = grad

    def current_weights(self) -> dict[str, float]:
        w = self.task_weights.detach().clamp_min(1e-6)
        w = len(self.keys) * w / w.sum()
        return {k: float(v) for k, v in zip(self.keys, w, strict=True)}


@mtkd.hookimpl
def register_weightings(register: Any) -> None:
    register(UncertaintyWeighting)
    register(DynamicWeightAveraging)
    register(GradNorm)
