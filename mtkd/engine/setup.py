"""What a training run is made of, built from the recipe's ``trainer`` block: device,
optimizer and schedule (timm), and the loss-weighting strategy (a plugin)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from omegaconf import DictConfig
from timm.optim import create_optimizer_v2, list_optimizers
from timm.scheduler import create_scheduler_v2

from ..config import check_choices, named_block
from ..errors import RecipeError, did_you_mean
from ..hookspecs import hookimpl
from ..model.multitask import MultiTaskModel
from ..plugins import PluginSet, plugins_for
from ..weighting import FixedWeighting, LossWeighting
from . import hardware
from .finetune import param_groups

SCHEDULERS = ("cosine", "tanh", "step", "multistep", "plateau", "poly")


@hookimpl
def register_weightings(register: Callable[[type[LossWeighting]], None]) -> None:
    """The paper's static weights, always available: the strategy a recipe without
    ``trainer.weighting`` trains with."""
    register(FixedWeighting)


def check_trainer(trainer: DictConfig) -> None:
    """Options checked before anything moves to a device."""
    check_choices(trainer)
    hardware.check_options(trainer)


def prepare_model(model: MultiTaskModel, trainer: DictConfig, device: torch.device) -> None:
    """Device, memory format and (under DDP on GPUs) synchronised BatchNorm."""
    model.to(device)
    hardware.to_memory_format(model, trainer)
    hardware.use_sync_batchnorm(model, trainer, device)


def check_setup(cfg: DictConfig, plugins: PluginSet) -> None:
    """The trainer's options, optimizer, scheduler and loss weighting (with its options) exist:
    checked before the data set and the run folder are made, not when training starts."""
    check_trainer(cfg.trainer)
    _check_optimizer(cfg.trainer)
    _check_scheduler(cfg.trainer)
    _weighting_class(cfg, plugins)


def _check_optimizer(trainer: DictConfig) -> None:
    known = [str(name) for name in list_optimizers()]
    if trainer.optimizer.lower() not in known:
        raise RecipeError(
            f"trainer.optimizer: unknown optimizer '{trainer.optimizer}'"
            + did_you_mean(trainer.optimizer, known)
        )


def _check_scheduler(trainer: DictConfig) -> None:
    name = trainer.scheduler
    if name not in ("none", "", None) and name not in SCHEDULERS:
        raise RecipeError(
            f"trainer.scheduler: unknown scheduler '{name}'" + did_you_mean(name, SCHEDULERS)
        )


def make_optimizer(model: torch.nn.Module, trainer: DictConfig) -> torch.optim.Optimizer:
    _check_optimizer(trainer)
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
    cls, options = _weighting_class(cfg, plugins)
    return cls(model.tasks, options, list(model.encoder.parameters()))


def _weighting_class(cfg: DictConfig, plugins: PluginSet | None) -> tuple[type[LossWeighting], Any]:
    """The weighting class ``trainer.weighting`` names, and its parsed options."""
    name, raw = named_block(dict(cfg.trainer.weighting), "trainer.weighting", default="fixed")
    if plugins is None and name == FixedWeighting.name:  # the default needs no plugin loading
        cls: type[LossWeighting] = FixedWeighting
    else:  # the recipe's own `plugins:` may provide the strategy
        registry = plugins_for(cfg, plugins).weightings
        cls = registry.get(name, key="trainer.weighting.name")
    return cls, cls.parse_options(raw, "trainer.weighting")


def add_weighting_parameters(optimizer: torch.optim.Optimizer, weighting: LossWeighting) -> None:
    """Learned loss weights train in their own group, without weight decay."""
    learned = [p for p in weighting.parameters() if p.requires_grad]
    if learned:
        optimizer.add_param_group({"params": learned, "weight_decay": 0.0})


def make_scheduler(optimizer: torch.optim.Optimizer, trainer: DictConfig) -> Any:
    name = trainer.scheduler
    if name in ("none", "", None):
        return None
    _check_scheduler(trainer)
    scheduler, _ = create_scheduler_v2(
        optimizer, sched=name, num_epochs=trainer.max_epochs, warmup_epochs=trainer.warmup_epochs
    )
    return scheduler
