"""One training step: forward under autocast, per-task losses over the samples that carry
each label, the weighting strategy's backward, AMP scaling, and the NaN policy."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from rich.console import Console
from torch import nn

from ..context import EpochTally, LoopState, TrainContext
from ..errors import MtkdError, RecipeError
from ..model.losses import task_losses
from ..model.multitask import MultiTaskModel
from ..samples import Batch, to_device
from ..utils import distributed
from ..weighting import EncoderOutputs, FixedWeighting, LossWeighting, fixed_total
from . import hardware

Losses = dict[str, torch.Tensor]


class RunningTally:
    """The epoch's loss sums, kept on the device so a step costs no host sync."""

    def __init__(self, keys: list[str], start: EpochTally, device: torch.device) -> None:
        self.keys, self.device = keys, device
        self.seen = start.seen
        self.sums = {k: torch.tensor(start.sums.get(k, 0.0), device=device) for k in keys}
        self.counts = {k: start.counts.get(k, 0) for k in keys}

    def add(self, size: int, losses: Losses, counts: Mapping[str, int]) -> None:
        self.seen += size
        for key in self.keys:
            if counts[key]:
                self.sums[key] += losses[key].detach() * counts[key]
                self.counts[key] += counts[key]

    def snapshot(self, per_rank: bool = False) -> EpochTally:
        """The tally so far, summed over ranks (a collective under DDP: every rank calls it);
        ``per_rank`` (for a checkpoint) adds each rank's own sums (one more collective)."""
        own = [self.sums[k].float() for k in self.keys]
        packed: list[torch.Tensor | float] = [float(self.seen), *own]
        packed += [float(self.counts[k]) for k in self.keys]
        values = distributed.sum_over_ranks(packed, self.device)
        n = len(self.keys)
        rank_sums = []
        if per_rank and distributed.is_active():
            gathered = distributed.gather_from_ranks(own, self.device)
            rank_sums = [dict(zip(self.keys, sums, strict=True)) for sums in gathered]
        return EpochTally(
            int(values[0]),
            dict(zip(self.keys, values[1 : 1 + n], strict=True)),
            {k: int(v) for k, v in zip(self.keys, values[1 + n :], strict=True)},
            rank_sums,
        )


class TrainStep:
    """Runs optimizer steps for one training run; owns the AMP scaler and the forward module."""

    def __init__(
        self,
        ctx: TrainContext[MultiTaskModel],
        state: LoopState,
        scheduler: Any,
        console: Console,
        on_device: Callable[[Batch], Batch] | None = None,
    ):
        self.ctx, self.state, self.scheduler, self.console = ctx, state, scheduler, console
        self.on_device = on_device  # e.g. augmentation of the moved batch
        self.trainer = ctx.cfg.trainer
        self.weighting: LossWeighting = ctx.weighting or FixedWeighting(ctx.model.tasks, None, [])
        self.aggregates = self.weighting.aggregates_gradients
        if self.aggregates:
            check_aggregation(ctx.model, self.trainer, self.weighting.name)
        self.scaler = hardware.grad_scaler(self.trainer, ctx.device)
        self._runner: nn.Module | None = None
        self._runner_for: tuple[bool, ...] = ()

    def start_epoch(self) -> None:
        """Rebuild the forward module if the trainable set changed (an encoder unfreezing)."""
        signature = hardware.trainable_signature(self.ctx.model)
        if self._runner is None or signature != self._runner_for:
            self._runner = hardware.forward_module(
                self.ctx.model, self.trainer, self.ctx.device, data_parallel=not self.aggregates
            )
            self._runner_for = signature

    def __call__(self, raw: Any, where: str, tally: RunningTally) -> tuple[torch.Tensor, Losses]:
        """One step on a loader batch; returns the recipe-weighted total (what is logged)."""
        ctx, model, runner = self.ctx, self.ctx.model, self._runner
        assert runner is not None, "start_epoch() first"
        batch = to_device(raw, ctx.device)
        if self.on_device is not None:
            batch = self.on_device(batch)
        images = hardware.prepare_images(batch["image"], self.trainer)
        with hardware.autocast(self.trainer, ctx.device):
            with encoder_outputs(model.encoder, self.aggregates) as features:
                outputs = runner(images)
            losses, counts = task_losses(outputs, batch, model.tasks, model.heads)
        total = fixed_total(losses, model.tasks)
        ctx.optimizer.zero_grad(set_to_none=True)
        if self.trainer.check_finite and not _finite_on_every_rank(total):
            self.non_finite(where, losses)
        else:
            self._backward_and_step(losses, counts, features)
            tally.add(int(batch["image"].shape[0]), losses, counts)
        return total, losses

    def _backward_and_step(
        self, losses: Losses, counts: Mapping[str, int], features: EncoderOutputs | None
    ) -> None:
        self.weighting.backward(losses, counts, self.scaler, features)
        distributed.average_gradients(self._gradients_to_average())
        optimizer = self.ctx.optimizer
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()

    def _gradients_to_average(self) -> Iterable[nn.Parameter]:
        """What DDP does not average: the strategy's own weights and, for a gradient
        aggregator (which runs without DDP and settles the encoder's itself), the heads'."""
        yield from self.weighting.parameters()
        if self.aggregates:
            shared = {id(p) for p in self.weighting.shared}
            yield from (p for p in self.ctx.model.parameters() if id(p) not in shared)

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


def check_aggregation(model: nn.Module, trainer: Any, name: str) -> None:
    """What a strategy that differentiates each task through the encoder cannot run with."""
    why = f"the '{name}' weighting takes each task's gradient through the encoder under torch.vmap"
    if trainer.compile:
        raise RecipeError(
            f"trainer.compile: {why}, which compiled modules do not support; "
            "set trainer.compile=false"
        )
    if any(isinstance(m, nn.SyncBatchNorm) for m in model.modules()):
        raise RecipeError(
            f"trainer.sync_batchnorm: {why}, and SyncBatchNorm's backward is a collective it "
            "cannot batch; set trainer.sync_batchnorm=false (each rank normalises its share)"
        )


@contextmanager
def encoder_outputs(encoder: nn.Module, wanted: bool) -> Iterator[EncoderOutputs | None]:
    """For a strategy that aggregates gradients: the encoder's outputs of the forward run
    inside the block, the heads reading leaf copies of them (the graph is cut there)."""
    if not wanted:
        yield None
        return
    features = EncoderOutputs()

    def cut(_module: nn.Module, _inputs: Any, output: Any) -> Any:
        copies: dict[int, torch.Tensor] = {}
        for tensor in [*output[0], output[1]]:
            if id(tensor) not in copies:
                copy = tensor.detach().requires_grad_(tensor.requires_grad)
                copies[id(tensor)] = copy
                features.outputs.append(tensor)
                features.cut.append(copy)
        return [copies[id(t)] for t in output[0]], copies[id(output[1])]

    handle = encoder.register_forward_hook(cut)
    try:
        yield features
    finally:
        handle.remove()


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
