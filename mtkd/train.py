"""The training loop: optimizer and schedule from timm, early stopping on validation loss,
best and last checkpoints, a JSONL metrics log, and rich progress."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from timm.optim import create_optimizer_v2, list_optimizers
from timm.scheduler import create_scheduler_v2
from torch.utils.data import DataLoader

from .checkpoint import save_checkpoint, save_weights
from .errors import MtkdError, RecipeError, did_you_mean
from .evaluate import evaluate_loader, prefixed, to_device
from .losses import task_losses, weighted_total
from .model import MultiTaskModel
from .plugins import PluginSet

SCHEDULERS = ("cosine", "tanh", "step", "multistep", "plateau", "poly")


def resolve_device(name: str) -> torch.device:
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
        model, opt=trainer.optimizer, lr=trainer.lr, weight_decay=trainer.weight_decay
    )


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


def _train_one_epoch(
    ctx: TrainContext, loader: DataLoader, progress: Progress, max_steps: int | None, log_every: int
) -> dict[str, Any]:
    model, optimizer, device = ctx.model, ctx.optimizer, ctx.device
    model.train()
    steps = len(loader) if max_steps is None else min(len(loader), max_steps)
    bar = progress.add_task(f"epoch {ctx.epoch + 1}", total=steps, status="")
    sums = {key: torch.zeros((), device=device) for key in model.tasks}
    counts = dict.fromkeys(model.tasks, 0)
    total_sum = torch.zeros((), device=device)
    seen = 0
    for step, raw in enumerate(loader):
        if step >= steps:
            break
        batch = to_device(raw, device)
        outputs = model(batch["image"])
        losses, n = task_losses(outputs, batch, model.tasks)
        total = weighted_total(losses, model.tasks)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        size = int(batch["image"].shape[0])
        total_sum += total.detach() * size
        seen += size
        for key in model.tasks:
            if n[key]:
                sums[key] += losses[key].detach() * n[key]
                counts[key] += n[key]
        if (step + 1) % log_every == 0 or step + 1 == steps:
            progress.update(bar, completed=step + 1, status=f"loss {float(total.detach()):.4f}")
    progress.remove_task(bar)
    results: dict[str, Any] = {"loss": float(total_sum) / max(seen, 1)}
    for key in model.tasks:
        if counts[key]:
            results[f"{key}/loss"] = float(sums[key]) / counts[key]
    bad = [k for k, v in results.items() if not math.isfinite(v)]
    if bad:
        raise MtkdError(f"epoch {ctx.epoch + 1}: non-finite training loss in {', '.join(bad)}")
    return results


def fit(
    model: MultiTaskModel,
    train_loader: DataLoader,
    val_loader: DataLoader | None,
    cfg: DictConfig,
    *,
    plugins: PluginSet | None = None,
    run_dir: Path | None = None,
    console: Console | None = None,
) -> TrainContext:
    """Train until ``max_epochs`` or early stopping; the model ends with its best weights."""
    trainer = cfg.trainer
    console = console or Console()
    device = resolve_device(trainer.device)
    model.to(device)
    optimizer = make_optimizer(model, trainer)
    scheduler = make_scheduler(optimizer, trainer)
    ctx = TrainContext(cfg=cfg, model=model, optimizer=optimizer, device=device, run_dir=run_dir)
    hook = plugins.hook if plugins is not None else None
    has_val = val_loader is not None and len(val_loader.dataset) > 0  # type: ignore[arg-type]
    monitor = "val/loss" if has_val else "train/loss"
    if not has_val:
        console.print("[yellow]no validation samples: early stopping watches the training loss")
    best_state: dict[str, torch.Tensor] | None = None
    stale = 0
    log_path = run_dir / "metrics.jsonl" if run_dir else None
    if hook:
        hook.on_train_start(context=ctx)
    with _EpochProgress(console, trainer.progress) as progress:
        for epoch in range(trainer.max_epochs):
            ctx.epoch = epoch
            started = time.perf_counter()
            record: dict[str, Any] = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"]}
            train_metrics = _train_one_epoch(
                ctx, train_loader, progress, trainer.max_steps_per_epoch, max(1, trainer.log_every)
            )
            record.update(prefixed(train_metrics, "train"))
            if has_val:
                assert val_loader is not None
                record.update(prefixed(evaluate_loader(model, val_loader, device), "val"))
            record["time_s"] = round(time.perf_counter() - started, 3)
            value = float(record.get(monitor, math.inf))
            improved = value < ctx.best_value - trainer.min_delta
            if improved:
                ctx.best_value, ctx.best_epoch, stale = value, epoch + 1, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                stale += 1
            record["best"] = improved
            ctx.history.append(record)
            if log_path:
                with log_path.open("a") as fh:
                    fh.write(json.dumps(record) + "\n")
                state = {
                    "epoch": epoch + 1,
                    "best_epoch": ctx.best_epoch,
                    "best_value": ctx.best_value,
                }
                save_checkpoint(run_dir / "checkpoints" / "last", model, optimizer, state)  # type: ignore[operator]
                if improved:
                    save_weights(model, run_dir / "checkpoints" / "best.safetensors")  # type: ignore[operator]
            console.print(_epoch_line(record, monitor))
            if scheduler is not None:
                scheduler.step(epoch + 1, value)
            if hook:
                hook.on_epoch_end(context=ctx, epoch=epoch + 1, metrics=record)
            if trainer.patience > 0 and stale >= trainer.patience:
                ctx.stopped_early = True
                console.print(f"early stop: {monitor} did not improve for {stale} epochs")
                break
            if ctx.stop_requested:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    if hook:
        hook.on_train_end(context=ctx)
    return ctx


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
