"""The training loop: optimizer and schedule from timm, early stopping on validation loss,
best and last checkpoints, a JSONL metrics log, and rich progress."""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from safetensors.torch import load_file
from timm.optim import create_optimizer_v2, list_optimizers
from timm.scheduler import create_scheduler_v2
from torch import nn
from torch.utils.data import DataLoader

from ..config import parse_options
from ..data.build import EpochSampler
from ..errors import MtkdError, RecipeError, did_you_mean
from ..metrics.evaluate import evaluate_loader, prefixed, to_device
from ..model.losses import task_losses, weighted_total
from ..model.multitask import MultiTaskModel
from ..plugins import PluginSet, plugins_for
from ..utils import distributed, rng
from ..utils.checkpoint import load_checkpoint, save_checkpoint, save_weights
from ..weighting import FixedWeighting, LossWeighting
from . import hardware
from .finetune import FreezeSchedule, param_groups

NAN_POLICIES = ("stop", "skip", "lower_lr")
SCHEDULERS = ("cosine", "tanh", "step", "multistep", "plateau", "poly")


def resolve_device(name: str) -> torch.device:
    if name in ("auto", "cuda") and torch.cuda.is_available() and distributed.is_active():
        return torch.device("cuda", torch.cuda.current_device())  # this rank's GPU
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise RecipeError(f"trainer.device: '{name}' is not a device: {exc}") from exc


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_optimizer(model: torch.nn.Module, trainer: DictConfig) -> torch.optim.Optimizer:
    known = [str(name) for name in list_optimizers()]
    if trainer.optimizer.lower() not in known:
        raise RecipeError(
            f"trainer.optimizer: unknown optimizer '{trainer.optimizer}'"
            + did_you_mean(trainer.optimizer, known)
        )
    return create_optimizer_v2(
        param_groups(model, trainer),
        opt=trainer.optimizer,
        lr=trainer.lr,
        weight_decay=trainer.weight_decay,
    )


def make_weighting(
    model: MultiTaskModel, cfg: DictConfig, plugins: PluginSet | None
) -> LossWeighting:
    """The recipe's ``trainer.weighting`` strategy, its options checked against the plugin."""
    raw = dict(cfg.trainer.weighting)
    name = str(raw.pop("name", "fixed"))
    if plugins is None and name == FixedWeighting.name:  # the default needs no plugin loading
        cls: type[LossWeighting] = FixedWeighting
    else:  # the recipe's own `plugins:` may provide the strategy
        registry = plugins_for(cfg, plugins).weightings
        cls = registry.get(name, key="trainer.weighting.name")
    options = parse_options(cls.Options, raw, "trainer.weighting")
    return cls(model.tasks, options, list(model.encoder.parameters()))


def make_scheduler(optimizer: torch.optim.Optimizer, trainer: DictConfig) -> Any:
    name = trainer.scheduler
    if name in ("none", "", None):
        return None
    if name not in SCHEDULERS:
        raise RecipeError(
            f"trainer.scheduler: unknown scheduler '{name}'" + did_you_mean(name, SCHEDULERS)
        )
    scheduler, _ = create_scheduler_v2(
        optimizer, sched=name, num_epochs=trainer.max_epochs, warmup_epochs=trainer.warmup_epochs
    )
    return scheduler


@dataclass
class TrainContext:
    """What lifecycle hooks see: the live model, optimizer, recipe, and progress so far."""

    cfg: DictConfig
    model: MultiTaskModel
    optimizer: torch.optim.Optimizer
    device: torch.device
    run_dir: Path | None
    weighting: LossWeighting | None = None
    rank: int = 0  # this process's rank under torchrun (0 in a single process)
    world_size: int = 1
    history: list[dict[str, Any]] = field(default_factory=list)
    epoch: int = 0
    best_epoch: int = -1
    best_value: float = math.inf
    stopped_early: bool = False
    stop_requested: bool = False  # a hook may set this to end training after the epoch


class _EpochProgress:
    """Rich progress bars that fall back to nothing when disabled."""

    def __init__(self, console: Console, enabled: bool) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[status]}"),
            console=console,
            disable=not enabled,
            transient=True,
        )

    def __enter__(self) -> Progress:
        return self.progress.__enter__()

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(None, None, None)


@dataclass
class EpochTally:
    """Running loss sums of the current epoch; saved mid-epoch so a resumed epoch logs exactly."""

    total: float = 0.0
    seen: int = 0
    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def task_losses(self) -> dict[str, float]:
        """Mean loss per task over its labelled samples (tasks with none are left out)."""
        return {k: self.sums[k] / n for k, n in self.counts.items() if n}

    def results(self) -> dict[str, float]:
        out = {"loss": self.total / max(self.seen, 1)}
        out.update({f"{k}/loss": mean for k, mean in self.task_losses().items()})
        return out


class _Stop(Exception):
    """Ctrl-C was pressed: the loop checkpoints at the next step boundary and stops."""


def _bad_tasks(losses: dict[str, torch.Tensor]) -> list[str]:
    return [key for key, loss in losses.items() if not bool(torch.isfinite(loss.detach()))]


class _Loop:
    """One training run's mutable state, so that a checkpoint can capture all of it."""

    def __init__(
        self,
        ctx: TrainContext,
        train_loader: DataLoader,
        scheduler: Any,
        progress: Progress,
        hook: Any,
        console: Console,
    ) -> None:
        self.ctx, self.loader, self.scheduler = ctx, train_loader, scheduler
        self.progress, self.hook, self.console = progress, hook, console
        self.trainer = ctx.cfg.trainer
        self.weighting = ctx.weighting or FixedWeighting(ctx.model.tasks, None, [])
        self.scaler = hardware.grad_scaler(self.trainer, ctx.device)
        self.freeze = FreezeSchedule.from_trainer(self.trainer)
        self.stale = 0
        self.global_step = 0
        self.skipped_steps = 0
        self.interrupted = False
        self._runner: nn.Module | None = None
        self._runner_for: tuple[bool, ...] = ()

    def runner(self) -> nn.Module:
        """The module running the forward pass, rebuilt when the trainable set changes."""
        signature = hardware.trainable_signature(self.ctx.model)
        if self._runner is None or signature != self._runner_for:
            self._runner = hardware.forward_module(self.ctx.model, self.trainer, self.ctx.device)
            self._runner_for = signature
        return self._runner

    def steps_per_epoch(self) -> int:
        sampler = self.loader.sampler
        n = sampler.length() if isinstance(sampler, EpochSampler) else len(self.loader.dataset)  # type: ignore[arg-type]
        full = math.ceil(n / (self.loader.batch_size or 1))
        cap = self.trainer.max_steps_per_epoch
        return full if cap is None else min(full, cap)

    def checkpoint(self, epoch: int, step: int, tally: EpochTally) -> None:
        """Everything needed to continue from here, written atomically (by rank 0)."""
        run_dir = self.ctx.run_dir
        if run_dir is None or not distributed.is_main():
            return
        state = {
            "epoch": epoch,
            "step": step,
            "global_step": self.global_step,
            "history_len": len(self.ctx.history),
            "best_epoch": self.ctx.best_epoch,
            "best_value": self.ctx.best_value,
            "stale": self.stale,
            "skipped_steps": self.skipped_steps,
            "tally": asdict(tally),
        }
        extra = {
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "weighting": self.weighting.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
        }
        save_checkpoint(
            run_dir / "checkpoints" / "last",
            self.ctx.model,
            self.ctx.optimizer,
            state,
            extra,
            rng.capture(),
        )

    def train_epoch(self, epoch: int, start_step: int, tally: EpochTally) -> EpochTally:
        ctx, trainer = self.ctx, self.trainer
        model, optimizer, device = ctx.model, ctx.optimizer, ctx.device
        self.freeze.set_train_mode(model, epoch)  # model.train(), encoder frozen if scheduled
        runner = self.runner()
        steps = self.steps_per_epoch()
        bar = self.progress.add_task(
            f"epoch {epoch + 1}", total=steps, completed=start_step, status=""
        )
        sums = {k: torch.tensor(tally.sums.get(k, 0.0), device=device) for k in model.tasks}
        total_sum = torch.tensor(tally.total, device=device)
        counts, seen = {k: tally.counts.get(k, 0) for k in model.tasks}, tally.seen
        log_every, every = max(1, trainer.log_every), trainer.checkpoint_every

        def snapshot() -> EpochTally:
            """The epoch's tally so far, summed over ranks (a collective under DDP)."""
            keys = list(model.tasks)
            packed = torch.stack(
                [total_sum.float(), torch.tensor(float(seen), device=device)]
                + [sums[k].float() for k in keys]
                + [torch.tensor(float(counts[k]), device=device) for k in keys]
            ).double()
            values = distributed.all_reduce_sum(packed).tolist()
            n = len(keys)
            return EpochTally(
                values[0],
                int(values[1]),
                dict(zip(keys, values[2 : 2 + n], strict=True)),
                {k: int(v) for k, v in zip(keys, values[2 + n :], strict=True)},
            )

        for step, raw in enumerate(self.loader, start=start_step):
            if step >= steps:
                break
            batch = to_device(raw, device)
            images = hardware.prepare_images(batch["image"], trainer)
            with hardware.autocast(trainer, device):
                losses, n = task_losses(runner(images), batch, model.tasks)
            total = weighted_total(losses, model.tasks)  # the recipe's weighting: what is logged
            optimizer.zero_grad(set_to_none=True)
            if trainer.check_finite and not self._finite(total):
                self._non_finite(epoch, step, losses)
            else:
                self._backward_and_step(losses, n)
                size = int(batch["image"].shape[0])
                total_sum += total.detach() * size
                seen += size
                for key in model.tasks:
                    if n[key]:
                        sums[key] += losses[key].detach() * n[key]
                        counts[key] += n[key]
            self.global_step += 1
            done = step + 1
            if done % log_every == 0 or done == steps:
                value = float(total.detach())  # a host sync: only here and in _finite
                if not trainer.check_finite and not math.isfinite(value):
                    self._non_finite(epoch, step, losses, checked_late=True)
                self.progress.update(bar, completed=done, status=f"loss {value:.4f}")
            if (every and done % every == 0 and done < steps) or (
                self.interrupted and done < steps
            ):
                self.checkpoint(epoch, done, snapshot())
            if self.hook:
                self.hook.on_step_end(context=ctx, step=self.global_step)
            if self.interrupted and done < steps:
                raise _Stop
        self.progress.remove_task(bar)
        return snapshot()

    def _finite(self, total: torch.Tensor) -> bool:
        """Whether every rank's loss is finite (ranks must agree to skip a step together)."""
        flag = torch.isfinite(total.detach()).float().reshape(1)
        return bool(distributed.all_reduce_sum(flag) == distributed.world_size())

    def _backward_and_step(self, losses: dict[str, torch.Tensor], counts: dict[str, int]) -> None:
        combined = self.weighting.combine(losses, counts)
        optimizer = self.ctx.optimizer
        if self.scaler is not None:
            scale = self.scaler.get_scale()
            for p in self.weighting.parameters():  # gradients a strategy set itself (GradNorm)
                if p.grad is not None:  # are unscaled: scale them as backward scales the rest
                    p.grad.mul_(scale)
            self.scaler.scale(combined).backward()
            distributed.average_gradients(self.weighting.parameters())
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            combined.backward()
            distributed.average_gradients(self.weighting.parameters())
            optimizer.step()

    def _non_finite(
        self, epoch: int, step: int, losses: dict[str, torch.Tensor], checked_late: bool = False
    ) -> None:
        """A NaN/Inf loss: the step is not taken; stop, skip it, or halve the learning rate.

        With ``check_finite`` off it is only noticed at a logging step, after the update:
        the run then stops whatever the policy (the best checkpoint is untouched)."""
        where = f"epoch {epoch + 1}, step {step + 1}"
        bad = ", ".join(_bad_tasks(losses)) or "the weighted total"
        policy = self.trainer.on_nan
        if checked_late:
            raise MtkdError(
                f"{where}: non-finite loss in task(s) {bad} (trainer.check_finite=false, so "
                "it was noticed at a logging step after updating the weights); stopped"
            )
        self.skipped_steps += 1
        if policy == "stop" or self.skipped_steps > self.trainer.max_skipped_steps:
            raise MtkdError(
                f"{where}: non-finite loss in task(s) {bad}; stopped (trainer.on_nan={policy}, "
                f"{self.skipped_steps} step(s) skipped so far)"
            )
        if policy == "lower_lr":
            for group in self.ctx.optimizer.param_groups:
                group["lr"] *= 0.5
        self.console.print(f"[yellow]{where}: non-finite loss in {bad}: step skipped ({policy})")


def _restore(loop: _Loop, run_dir: Path, scheduler: Any) -> tuple[int, int, EpochTally]:
    """Load the last checkpoint into the loop; returns (epoch, step, tally) to continue from."""
    ctx = loop.ctx
    last = run_dir / "checkpoints" / "last"
    state, extra, rng_state, notes = load_checkpoint(last, ctx.model, ctx.optimizer)
    for note in notes:
        loop.console.print(f"[yellow]{note}: resuming from the checkpoint before it")
    if scheduler is not None and extra.get("scheduler") is not None:
        scheduler.load_state_dict(extra["scheduler"])
    if extra.get("weighting"):
        loop.weighting.load_state_dict(extra["weighting"])
    if loop.scaler is not None and extra.get("scaler"):
        loop.scaler.load_state_dict(extra["scaler"])
    log = run_dir / "metrics.jsonl"
    lines = log.read_text().splitlines()[: state["history_len"]] if log.is_file() else []
    distributed.barrier()  # every rank has read the log before rank 0 truncates it
    if distributed.is_main():
        log.write_text("".join(line + "\n" for line in lines))  # drop epochs after the checkpoint
    ctx.history = [json.loads(line) for line in lines]
    ctx.best_epoch, ctx.best_value = state["best_epoch"], state["best_value"]
    loop.stale, loop.global_step = state["stale"], state["global_step"]
    loop.skipped_steps = state["skipped_steps"]
    rng.restore(rng_state)
    # the saved tally is already summed over ranks: rank 0 carries it, the others start at 0
    tally = EpochTally(**state["tally"]) if distributed.is_main() else EpochTally()
    return state["epoch"], state["step"], tally


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
) -> TrainContext:
    """Train until ``max_epochs`` or early stopping; the model ends with its best weights.

    With ``resume``, continue from ``run_dir``'s last checkpoint exactly where it was taken
    (mid-epoch included): weights, optimizer, scheduler, early stopping, RNG and data order.
    Ctrl-C checkpoints at the next step boundary and raises :class:`Interrupted`.
    Under torchrun (see :mod:`mtkd.distributed`) every rank calls this; rank 0 writes.
    """
    trainer = cfg.trainer
    if trainer.on_nan not in NAN_POLICIES:
        raise RecipeError(
            f"trainer.on_nan: '{trainer.on_nan}' is not one of {', '.join(NAN_POLICIES)}"
        )
    hardware.check_options(trainer)
    main = distributed.is_main()
    console = console or Console(quiet=not main)
    device = resolve_device(trainer.device)
    model.to(device)
    hardware.to_memory_format(model, trainer)
    hardware.use_sync_batchnorm(model, trainer, device)
    optimizer = make_optimizer(model, trainer)
    weighting = make_weighting(model, cfg, plugins).to(device)
    learned = [p for p in weighting.parameters() if p.requires_grad]
    if learned:
        optimizer.add_param_group({"params": learned, "weight_decay": 0.0})
    scheduler = make_scheduler(optimizer, trainer)
    ctx = TrainContext(
        cfg=cfg,
        model=model,
        optimizer=optimizer,
        device=device,
        run_dir=run_dir,
        weighting=weighting,
        rank=distributed.rank(),
        world_size=distributed.world_size(),
    )
    hook = plugins.hook if plugins is not None else None
    has_val = val_loader is not None and _val_size(val_loader) > 0
    monitor = "val/loss" if has_val else "train/loss"
    if not has_val:
        console.print("[yellow]no validation samples: early stopping watches the training loss")
    best_path = run_dir / "checkpoints" / "best.safetensors" if run_dir and main else None
    best_state: dict[str, torch.Tensor] | None = None
    with _EpochProgress(console, trainer.progress and main) as progress, _CtrlC() as ctrl_c:
        loop = _Loop(ctx, train_loader, scheduler, progress, hook, console)
        ctrl_c.loop = loop
        first_epoch, start_step, tally = 0, 0, EpochTally()
        if resume:
            assert run_dir is not None
            first_epoch, start_step, tally = _restore(loop, run_dir, scheduler)
            best_file = run_dir / "checkpoints" / "best.safetensors"
            if best_file.is_file():
                best_state = load_file(str(best_file), device=str(device))
            console.print(f"resumed at epoch {first_epoch + 1}, step {start_step}")
        elif hook:
            hook.on_train_start(context=ctx)
        sampler = train_loader.sampler
        for epoch in range(first_epoch, trainer.max_epochs):
            if _should_stop(ctx, loop, trainer, monitor, console):
                break
            ctx.epoch = epoch
            if isinstance(sampler, EpochSampler):
                sampler.set_epoch(epoch, start=start_step * (train_loader.batch_size or 1))
            started = time.perf_counter()
            record: dict[str, Any] = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"]}
            try:
                tally = loop.train_epoch(epoch, start_step, tally)
            except _Stop:
                raise Interrupted(run_dir) from None
            # training throughput over all ranks (a resumed epoch counts its whole tally)
            images_per_s = round(tally.seen / max(time.perf_counter() - started, 1e-9), 2)
            distributed.sync_buffers(model)
            start_step = 0
            record.update(prefixed(tally.results(), "train"))
            weighting.epoch_end(tally.task_losses())
            if not isinstance(weighting, FixedWeighting):
                record.update({f"weight/{k}": w for k, w in weighting.current_weights().items()})
            tally = EpochTally()
            if has_val:
                assert val_loader is not None
                record.update(prefixed(evaluate_loader(model, val_loader, device), "val"))
            record["time_s"] = round(time.perf_counter() - started, 3)
            record["time_train_images_per_s"] = images_per_s
            value = float(record.get(monitor, math.inf))
            improved = value < ctx.best_value - trainer.min_delta
            if improved:
                ctx.best_value, ctx.best_epoch, loop.stale = value, epoch + 1, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                if best_path is not None:
                    save_weights(model, best_path)
            else:
                loop.stale += 1
            record["best"] = improved
            ctx.history.append(record)
            if run_dir is not None and main:
                with (run_dir / "metrics.jsonl").open("a") as fh:
                    fh.write(json.dumps(record) + "\n")
            console.print(_epoch_line(record, monitor))
            if scheduler is not None:
                scheduler.step(epoch + 1, value)
            loop.checkpoint(epoch + 1, 0, EpochTally())
            if hook:
                hook.on_epoch_end(context=ctx, epoch=epoch + 1, metrics=record)
            if loop.interrupted:
                raise Interrupted(run_dir)
        else:
            _should_stop(ctx, loop, trainer, monitor, console)
    loop.freeze.release(model)
    if best_state is not None:
        model.load_state_dict(best_state)
    hardware.plain_batchnorm(model)
    model.to(memory_format=torch.contiguous_format)
    if hook:
        hook.on_train_end(context=ctx)
    return ctx


def _val_size(loader: DataLoader) -> int:
    """Validation samples over all ranks (each rank holds a shard under DDP)."""
    local = torch.tensor([float(len(loader.dataset))])  # type: ignore[arg-type]
    return int(distributed.all_reduce_sum(local))


def _should_stop(
    ctx: TrainContext, loop: _Loop, trainer: DictConfig, monitor: str, console: Console
) -> bool:
    """Early stopping (checked again right after a resume), or a hook's request."""
    if trainer.patience > 0 and loop.stale >= trainer.patience:
        if not ctx.stopped_early:
            console.print(f"early stop: {monitor} did not improve for {loop.stale} epochs")
        ctx.stopped_early = True
        return True
    return ctx.stop_requested


class Interrupted(MtkdError):
    """Training was interrupted (Ctrl-C) after a checkpoint was written."""

    def __init__(self, run_dir: Path | None) -> None:
        where = f"mtkd resume {run_dir}" if run_dir else "(no run folder: nothing was saved)"
        super().__init__(f"interrupted; a checkpoint was saved. Continue with: {where}")
        self.run_dir = run_dir


class _CtrlC:
    """SIGINT sets a flag; the loop checkpoints at the next step boundary and stops there."""

    def __init__(self) -> None:
        self.loop: _Loop | None = None
        self._previous: Any = None

    def _handle(self, _signum: int, _frame: Any) -> None:
        if self.loop is not None:
            self.loop.interrupted = True

    def __enter__(self) -> _CtrlC:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _epoch_line(record: dict[str, Any], monitor: str) -> str:
    shown = [f"epoch {record['epoch']}"]
    for key, value in record.items():
        if (
            key.startswith(("train/", "val/"))
            and isinstance(value, float)
            and not key.endswith("/count")
        ):
            shown.append(f"{key} {value:.4f}")
    mark = " [green]*[/green]" if record["best"] else ""
    return "  ".join(shown) + f"  ({record['time_s']:.1f}s){mark}"
