"""One training step: forward under autocast, per-task losses over the samples that carry
each label, the weighting strategy's backward, AMP scaling, and the NaN policy."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from rich.console import Console
from torch import nn

from ..context import TrainContext
from ..errors import MtkdError
from ..metrics.evaluate import to_device
from ..model.losses import task_losses
from ..utils import distributed
from ..weighting import FixedWeighting, LossWeighting, fixed_total
from . import hardware
from .state import EpochTally, LoopState

Losses = dict[str, torch.Tensor]


class RunningTally:
    """The epoch's loss sums, kept on the device so a step costs no host sync."""

    def __init__(self, keys: list[str], start: EpochTally, device: torch.device) -> None:
        self.keys, self.device = keys, device
        self.total = torch.tensor(start.total, device=device)
        self.seen = start.seen
        self.sums = {k: torch.tensor(start.sums.get(k, 0.0), device=device) for k in keys}
        self.counts = {k: start.counts.get(k, 0) for k in keys}

    def add(
        self, total: torch.Tensor, size: int, losses: Losses, counts: Mapping[str, int]
    ) -> None:
        self.total += total.detach() * size
        self.seen += size
        for key in self.keys:
            if counts[key]:
                self.sums[key] += losses[key].detach() * counts[key]
                self.counts[key] += counts[key]

    def snapshot(self) -> EpochTally:
        """The tally so far, summed over ranks (a collective under DDP: every rank calls it)."""
        packed: list[torch.Tensor | float] = [self.total.float(), float(self.seen)]
        packed += [self.sums[k].float() for k in self.keys]
        packed += [float(self.counts[k]) for k in self.keys]
        values = distributed.sum_over_ranks(packed, self.device)
        n = len(self.keys)
        return EpochTally(
            values[0],
            int(values[1]),
            dict(zip(self.keys, values[2 : 2 + n], strict=True)),
            {k: int(v) for k, v in zip(self.keys, values[2 + n :], strict=True)},
        )


class TrainStep:
    """Runs optimizer steps for one training run; owns the AMP scaler and the forward module."""

    def __init__(self, ctx: TrainContext, state: LoopState, scheduler: Any, console: Console):
        self.ctx, self.state, self.scheduler, self.console = ctx, state, scheduler, console
        self.trainer = ctx.cfg.trainer
        self.weighting: LossWeighting = ctx.weighting or FixedWeighting(ctx.model.tasks, None, [])
        self.scaler = hardware.grad_scaler(self.trainer, ctx.device)
        self._runner: nn.Module | None = None
        self._runner_for: tuple[bool, ...] = ()

    def start_epoch(self) -> None:
        """Rebuild the forward module if the trainable set changed (an encoder unfreezing)."""
        signature = hardware.trainable_signature(self.ctx.model)
        if self._runner is None or signature != self._runner_for:
            self._runner = hardware.forward_module(self.ctx.model, self.trainer, self.ctx.device)
            self._runner_for = signature

    def __call__(self, raw: Any, where: str, tally: RunningTally) -> tuple[torch.Tensor, Losses]:
        """One step on a loader batch; returns the recipe-weighted total (what is logged)."""
        ctx, model, runner = self.ctx, self.ctx.model, self._runner
        assert runner is not None, "start_epoch() first"
        batch = to_device(raw, ctx.device)
        images = hardware.prepare_images(batch["image"], self.trainer)
        with hardware.autocast(self.trainer, ctx.device):
            losses, counts = task_losses(runner(images), batch, model.tasks, model.heads)
        total = fixed_total(losses, model.tasks)
        ctx.optimizer.zero_grad(set_to_none=True)
        if self.trainer.check_finite and not _finite_on_every_rank(total):
            self.non_finite(where, losses)
        else:
            self._backward_and_step(losses, counts)
            tally.add(total, int(batch["image"].shape[0]), losses, counts)
        return total, losses

    def _backward_and_step(self, losses: Losses, counts: Mapping[str, int]) -> None:
        combined = self.weighting.combine(losses, counts)
        optimizer = self.ctx.optimizer
        if self.scaler is None:
            combined.backward()
            distributed.average_gradients(self.weighting.parameters())
            optimizer.step()
            return
        scale = self.scaler.get_scale()
        for p in self.weighting.parameters():  # gradients a strategy set itself (GradNorm)
            if p.grad is not None:  # are unscaled: scale them as backward scales the rest
                p.grad.mul_(scale)
        self.scaler.scale(combined).backward()
        distributed.average_gradients(self.weighting.parameters())
        self.scaler.step(optimizer)
        self.scaler.update()

    def non_finite(self, where: str, losses: Losses, checked_late: bool = False) -> None:
        """A NaN/Inf loss: the step is not taken; stop, skip it, or halve the learning rate.

        With ``check_finite`` off it is only noticed at a logging step, after the update:
        the run then stops whatever the policy (the best checkpoint is untouched)."""
        bad = ", ".join(_bad_tasks(losses)) or "the weighted total"
        policy = self.trainer.on_nan
        if checked_late:
            raise MtkdError(
                f"{where}: non-finite loss in task(s) {bad} (trainer.check_finite=false, so "
                "it was noticed at a logging step after updating the weights); stopped"
            )
        self.state.skipped_steps += 1
        if policy == "stop" or self.state.skipped_steps > self.trainer.max_skipped_steps:
            raise MtkdError(
                f"{where}: non-finite loss in task(s) {bad}; stopped (trainer.on_nan={policy}, "
                f"{self.state.skipped_steps} step(s) skipped so far)"
            )
        if policy == "lower_lr":
            halve_learning_rate(self.ctx.optimizer, self.scheduler)
        self.console.print(f"[yellow]{where}: non-finite loss in {bad}: step skipped ({policy})")


def halve_learning_rate(optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
    """Halve every group's rate now and, with a timm scheduler, the rates it schedules from,
    so the next epoch's schedule keeps the halving (and a checkpoint saves it)."""
    for group in optimizer.param_groups:
        group["lr"] *= 0.5
    base = getattr(scheduler, "base_values", None)
    if base is not None:
        scheduler.base_values = [value * 0.5 for value in base]


def _finite_on_every_rank(total: torch.Tensor) -> bool:
    """Whether every rank's loss is finite (ranks must agree to skip a step together)."""
    flag = torch.isfinite(total.detach()).float().reshape(1)
    return bool(distributed.all_reduce_sum(flag) == distributed.world_size())


def _bad_tasks(losses: Losses) -> list[str]:
    return [key for key, loss in losses.items() if not bool(torch.isfinite(loss.detach()))]
