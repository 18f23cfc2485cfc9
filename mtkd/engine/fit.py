"""The training loop. ``fit`` builds a run's parts and :class:`Loop` runs its epochs; each
concern lives in its own module: setup (optimizer, schedule, weighting), step (forward,
backward, AMP, NaN policy), state (what a checkpoint holds), loop_checkpoint (the checkpoint),
best (early stopping's best weights), signals (Ctrl-C and SIGTERM), metrics_log, progress."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from rich.console import Console
from rich.progress import Progress
from torch.utils.data import DataLoader

from ..console import make_console
from ..context import EpochTally, TrainContext
from ..data.build import EpochSampler
from ..errors import Interrupted, MtkdError
from ..hookspecs import HookCalls
from ..metrics.evaluate import evaluate_loader, prefixed
from ..model.multitask import MultiTaskModel
from ..plugins import PluginSet
from ..samples import Batch
from ..utils import distributed
from ..utils.layout import METRICS, best_weights
from ..weighting import FixedWeighting, weighted_losses
from . import hardware
from .best import BestModel
from .finetune import FreezeSchedule
from .loop_checkpoint import LoopCheckpoint
from .metrics_log import MetricsLog
from .progress import COMPACT_LEGEND, compact_epoch_line, epoch_line, epoch_progress
from .setup import (
    add_weighting_parameters,
    check_trainer,
    make_optimizer,
    make_scheduler,
    make_weighting,
    prepare_model,
)
from .signals import StopRequested, StopSignals
from .step import RunningTally, TrainStep, halve_learning_rate


def fit(
    model: MultiTaskModel,
    train_loader: DataLoader,
    val_loader: DataLoader | None,
    cfg: DictConfig,
    *,
    plugins: PluginSet | None = None,
    run_dir: Path | None = None,
    console: Console | None = None,
    resume: bool = False,
    on_device: Callable[[Batch], Batch] | None = None,
) -> TrainContext[MultiTaskModel]:
    """Train until ``max_epochs`` or early stopping; the model ends with its best weights.

    With ``resume``, continue from ``run_dir``'s last checkpoint exactly where it was taken
    (mid-epoch included): weights, optimizer, scheduler, early stopping, RNG and data order.
    Ctrl-C or SIGTERM checkpoints at the next step boundary and raises :class:`Interrupted`.
    Under torchrun (see :mod:`mtkd.utils.distributed`) every rank calls this; rank 0 writes.
    ``on_device`` runs on each training batch once it is on the device, before the forward
    pass (``data.augment_on: device``: :class:`mtkd.data.batch_augment.DeviceAugment`).
    """
    check_trainer(cfg.trainer)
    console = console or make_console(quiet=not distributed.is_main())
    ctx = _context(model, cfg, plugins, run_dir)
    hook = plugins.hook if plugins is not None else None
    enabled = cfg.trainer.progress and distributed.is_main()
    with epoch_progress(console, enabled) as progress, StopSignals() as signals:
        loop = Loop(ctx, train_loader, val_loader, hook, console, progress, signals, on_device)
        if resume:
            assert run_dir is not None
            loop.resume(run_dir)
        elif hook:
            hook.on_train_start(context=ctx)
        loop.run()
    loop.finish()
    return ctx


def _context(
    model: MultiTaskModel, cfg: DictConfig, plugins: PluginSet | None, run_dir: Path | None
) -> TrainContext[MultiTaskModel]:
    device = hardware.resolve_device(cfg.trainer.device)
    prepare_model(model, cfg.trainer, device)
    optimizer = make_optimizer(model, cfg.trainer)
    weighting = make_weighting(model, cfg, plugins).to(device)
    add_weighting_parameters(optimizer, weighting)
    return TrainContext(
        cfg=cfg,
        model=model,
        optimizer=optimizer,
        device=device,
        run_dir=run_dir,
        weighting=weighting,
        rank=distributed.rank(),
        world_size=distributed.world_size(),
    )


class Loop:
    """Runs the epochs of one training run; ``ctx.state`` is the part a checkpoint keeps."""

    def __init__(
        self,
        ctx: TrainContext[MultiTaskModel],
        loader: DataLoader,
        val_loader: DataLoader | None,
        hook: HookCalls | None,
        console: Console,
        progress: Progress,
        signals: StopSignals,
        on_device: Callable[[Batch], Batch] | None = None,
    ) -> None:
        self.ctx, self.loader, self.hook, self.console = ctx, loader, hook, console
        self.progress, self.signals = progress, signals
        self.trainer = ctx.cfg.trainer
        self.state = ctx.state
        self.scheduler = make_scheduler(ctx.optimizer, self.trainer)
        self.step = TrainStep(ctx, self.state, self.scheduler, console, on_device)
        self.checkpoint = LoopCheckpoint(ctx, self.step, self.scheduler)
        self.freeze = FreezeSchedule.from_trainer(self.trainer)
        self.val_loader = val_loader if _has_samples(val_loader) else None
        if self.val_loader is None:
            console.print("[yellow]no validation samples: early stopping watches the training loss")
        main = distributed.is_main()
        self.log = MetricsLog(ctx.run_dir / METRICS if ctx.run_dir else None)
        best_path = best_weights(ctx.run_dir) if ctx.run_dir else None
        monitor = "val/loss" if self.val_loader is not None else "train/loss"
        self.best = BestModel(monitor, self.trainer.min_delta, best_path if main else None)
        self.lost_best = False  # resumed without the best weights so far (see resume)

    def resume(self, run_dir: Path) -> None:
        state = self.checkpoint.restore(run_dir, self.console)
        saved = self.checkpoint.saved_history
        self.ctx.history, note = self.log.keep_first(state.history_len, saved)
        if note:
            self.console.print(f"[yellow]{note}", highlight=False)
        self.state = self.step.state = self.ctx.state = state
        self.best.load(run_dir, self.ctx.device)
        if self.best.weights is None and state.best_epoch >= 1:
            self._forget_lost_best(state)
        self.console.print(f"resumed at epoch {state.epoch + 1}, step {state.step}")

    def _forget_lost_best(self, state: Any) -> None:
        """The best epoch's weights are gone (a corrupt best.safetensors was deleted): track
        the best of the epochs still to come, so the run ends with weights it really has and
        says which epoch they are from."""
        self.console.print(
            f"[yellow]the weights of the best epoch so far ({state.best_epoch}) are missing: "
            "the run ends with the best of the epochs still to come",
            highlight=False,
        )
        state.best_value, state.best_epoch, state.stale = math.inf, -1, 0
        self.lost_best = True

    def run(self) -> None:
        if self.trainer.console == "compact":
            self.console.print(COMPACT_LEGEND)
        for epoch in range(self.state.epoch, self.trainer.max_epochs):
            if self._should_stop():
                break
            self.run_epoch(epoch)
        else:
            self._should_stop()
        # (a run resumed without its lost best weights ends with its last epoch instead)
        if self.ctx.history and self.state.best_epoch < 1 and not self.lost_best:
            raise MtkdError(
                f"{self.best.monitor} was not finite in any of the {len(self.ctx.history)} "
                f"epoch(s) (trainer.on_nan={self.trainer.on_nan}): there are no best weights; "
                "lower trainer.lr or change the loss weighting, then run again"
            )

    def run_epoch(self, epoch: int) -> None:
        state, ctx = self.state, self.ctx
        state.epoch = epoch
        started = time.perf_counter()
        record: dict[str, Any] = {"epoch": epoch + 1, "lr": None}
        try:
            tally = self.train_epoch(epoch)
        except StopRequested:
            raise Interrupted(ctx.run_dir, self.signals.received) from None
        # training throughput over all ranks (a resumed epoch counts its whole tally)
        images_per_s = round(tally.seen / max(time.perf_counter() - started, 1e-9), 2)
        distributed.sync_buffers(ctx.model)
        record["lr"] = ctx.optimizer.param_groups[0]["lr"]  # after any on_nan halving
        self._end_epoch(record, tally)
        if self.val_loader is not None:
            val = evaluate_loader(ctx.model, self.val_loader, ctx.device)
            record.update(prefixed(val, "val"))
        record["time_s"] = round(time.perf_counter() - started, 3)
        record["time_train_images_per_s"] = images_per_s
        record["best"] = self.best.update(state, record, ctx.model)
        self._log(record)
        if self.scheduler is not None:
            self.scheduler.step(epoch + 1, self.best.value_of(record))
        self.checkpoint.save_epoch_end(state)
        if self.hook:
            self.hook.on_epoch_end(context=ctx, epoch=epoch + 1, metrics=record)
        self._check_monitor(record)
        if self.signals.received:
            raise Interrupted(ctx.run_dir, self.signals.received)

    def _check_monitor(self, record: dict[str, Any]) -> None:
        """A non-finite validation loss (weights that no longer compute): ``trainer.on_nan``
        stops the run in one line, or (skip, lower_lr) warns and never counts it as best."""
        value = self.best.value_of(record)
        if math.isfinite(value):
            return
        monitor = self.best.monitor
        split = monitor.split("/")[0] + "/"
        bad = [
            key.removeprefix(split).removesuffix("/loss")
            for key, v in record.items()
            if key.startswith(split) and key.endswith("/loss") and key != monitor
            if isinstance(v, float) and not math.isfinite(v)
        ]
        what = f"epoch {record['epoch']}: {monitor} is {value}" + (
            f" (task(s) {', '.join(bad)})" if bad else ""
        )
        policy = self.trainer.on_nan
        if policy == "stop":
            raise MtkdError(
                f"{what}; stopped (trainer.on_nan=stop): the weights no longer give finite "
                "losses; lower trainer.lr or change the loss weighting"
            )
        if policy == "lower_lr":
            halve_learning_rate(self.ctx.optimizer, self.scheduler)
        self.console.print(f"[yellow]{what}: not a best epoch ({policy})")

    def _end_epoch(self, record: dict[str, Any], tally: EpochTally) -> None:
        """Training figures of the epoch; the weighting strategy sees its task losses."""
        self.state.step, self.state.tally = 0, EpochTally()
        means = tally.task_losses()  # the loss by the one rule, as validation computes it
        record.update(prefixed(weighted_losses(means, self.ctx.model.tasks), "train"))
        record.update({f"train/{key}/loss": mean for key, mean in means.items()})
        weighting = self.step.weighting
        weighting.epoch_end(tally.task_losses())
        if not isinstance(weighting, FixedWeighting):
            record.update({f"weight/{k}": w for k, w in weighting.current_weights().items()})
        record.update(weighting.epoch_metrics())

    def _log(self, record: dict[str, Any]) -> None:
        self.ctx.history.append(record)
        self.log.append(record)
        if self.trainer.console == "full":
            self.console.print(epoch_line(record))
        else:
            tasks = self.ctx.model.tasks.items()
            shown = {key: task.console_metrics for key, task in tasks}
            self.console.print(compact_epoch_line(record, shown))

    def train_epoch(self, epoch: int) -> EpochTally:
        """Steps from ``state.step`` to the epoch's end; returns the tally over all ranks."""
        state, model = self.state, self.ctx.model
        self.freeze.set_train_mode(model, epoch)  # model.train(), encoder frozen if scheduled
        self.step.start_epoch()
        steps = self._steps_per_epoch()
        sampler = self.loader.sampler
        if isinstance(sampler, EpochSampler):
            sampler.set_epoch(epoch, start=state.step * (self.loader.batch_size or 1))
        bar = self.progress.add_task(
            f"epoch {epoch + 1}", total=steps, completed=state.step, status=""
        )
        tally = RunningTally(list(model.tasks), state.tally, self.ctx.device)
        for step, raw in enumerate(self.loader, start=state.step):
            if step >= steps:
                break
            where = f"epoch {epoch + 1}, step {step + 1}"
            total, losses = self.step(raw, where, tally)
            state.global_step, state.step = state.global_step + 1, step + 1
            self._after_step(step + 1, steps, bar, tally, (where, total, losses))
        self.progress.remove_task(bar)
        return tally.snapshot()

    def _after_step(
        self, done: int, steps: int, bar: Any, tally: RunningTally, result: tuple[Any, ...]
    ) -> None:
        """Progress, mid-epoch and interrupt checkpoints, the step hook, stopping."""
        where, total, losses = result
        if done % max(1, self.trainer.log_every) == 0 or done == steps:
            value = float(total.detach())  # a host sync: only here and in the finite check
            if not self.trainer.check_finite and not math.isfinite(value):
                self.step.non_finite(where, losses, checked_late=True)
            self.progress.update(bar, completed=done, status=f"loss {value:.4f}")
        else:  # the count costs no sync: the bar moves every step, the loss every log_every
            self.progress.update(bar, completed=done)
        every, stopping = self.trainer.checkpoint_every, self.signals.received is not None
        if done < steps and ((every and done % every == 0) or stopping):
            self.state.tally = tally.snapshot(per_rank=True)
            self.checkpoint.save(self.state)
        if self.hook:
            self.hook.on_step_end(context=self.ctx, step=self.state.global_step)
        if stopping and done < steps:
            raise StopRequested

    def _steps_per_epoch(self) -> int:
        sampler = self.loader.sampler
        n = sampler.length() if isinstance(sampler, EpochSampler) else len(self.loader.dataset)  # type: ignore[arg-type]
        full = math.ceil(n / (self.loader.batch_size or 1))
        cap = self.trainer.max_steps_per_epoch
        return full if cap is None else min(full, cap)

    def _should_stop(self) -> bool:
        """Early stopping (checked again right after a resume), or a hook's request."""
        patience, stale = self.trainer.patience, self.state.stale
        if patience > 0 and stale >= patience:
            if not self.ctx.stopped_early:
                self.console.print(
                    f"early stop: {self.best.monitor} did not improve for {stale} epochs"
                )
            self.ctx.stopped_early = True
            return True
        return self.ctx.stop_requested

    def finish(self) -> None:
        """Best weights back, plain BatchNorm and memory format, then ``on_train_end``."""
        model = self.ctx.model
        self.freeze.release(model)
        self.best.restore(model)
        if self.lost_best and self.best.weights is None and self.ctx.history:
            # the best was lost and no epoch came after: say whose weights the run ends with
            self.state.best_epoch = int(self.ctx.history[-1]["epoch"])
        hardware.plain_batchnorm(model)
        model.to(memory_format=torch.contiguous_format)
        if self.hook:
            self.hook.on_train_end(context=self.ctx)


def _has_samples(loader: DataLoader | None) -> bool:
    """Whether a validation loader holds samples on any rank (each holds a shard under DDP)."""
    if loader is None:
        return False
    local = torch.tensor([float(len(loader.dataset))])  # type: ignore[arg-type]
    return int(distributed.all_reduce_sum(local)) > 0
