"""How the model runs on the hardware: memory format, mixed precision, torch.compile, and
data-parallel wrapping. The trained weights always stay in the plain ``MultiTaskModel``;
only the module that runs the forward pass is wrapped."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from ..errors import RecipeError
from ..utils import distributed

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """``trainer.device``: auto picks this rank's GPU under torchrun, else any GPU, else CPU."""
    if name in ("auto", "cuda") and torch.cuda.is_available() and distributed.is_active():
        return torch.device("cuda", torch.cuda.current_device())  # this rank's GPU
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise RecipeError(f"trainer.device: '{name}' is not a device: {exc}") from exc


def check_options(trainer: DictConfig) -> None:
    if trainer.precision not in PRECISIONS:
        raise RecipeError(
            f"trainer.precision: '{trainer.precision}' is not one of {', '.join(PRECISIONS)}"
        )


def autocast(trainer: DictConfig, device: torch.device) -> AbstractContextManager[Any]:
    """bf16/fp16 autocast for the forward pass and losses; fp32 runs as written."""
    dtype = PRECISIONS[trainer.precision]
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(trainer: DictConfig, device: torch.device) -> torch.amp.GradScaler | None:
    """fp16 needs loss scaling against gradient underflow; bf16 has fp32's range and does not."""
    if trainer.precision != "fp16":
        return None
    return torch.amp.GradScaler(device.type)


def to_memory_format(model: nn.Module, trainer: DictConfig) -> None:
    if trainer.channels_last:
        model.to(memory_format=torch.channels_last)


def prepare_images(images: torch.Tensor, trainer: DictConfig) -> torch.Tensor:
    if trainer.channels_last and images.dim() == 4:
        return images.contiguous(memory_format=torch.channels_last)
    return images


def use_sync_batchnorm(model: nn.Module, trainer: DictConfig, device: torch.device) -> nn.Module:
    """Batch statistics over all ranks, so a global batch normalises as in one process.

    PyTorch implements SyncBatchNorm for GPUs only; on the CPU each rank keeps its own.
    """
    if trainer.sync_batchnorm and distributed.is_active() and device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def plain_batchnorm(module: nn.Module) -> nn.Module:
    """Undo :func:`use_sync_batchnorm` after training, so export and evaluation see plain BN."""
    if isinstance(module, nn.SyncBatchNorm):
        plain = nn.BatchNorm2d(
            module.num_features, module.eps, module.momentum, module.affine,
            module.track_running_stats,
        )  # fmt: skip
        plain.load_state_dict(module.state_dict())
        plain.train(module.training)
        return plain.to(next(iter(module.state_dict().values())).device)
    for name, child in module.named_children():
        replaced = plain_batchnorm(child)
        if replaced is not child:
            setattr(module, name, replaced)
    return module


def trainable_signature(model: nn.Module) -> tuple[bool, ...]:
    return tuple(p.requires_grad for p in model.parameters())


def forward_module(
    model: nn.Module, trainer: DictConfig, device: torch.device, data_parallel: bool = True
) -> nn.Module:
    """What runs the training forward pass: the model, wrapped in DDP and/or compiled.

    DDP only synchronises the parameters that require gradients when it is built, so the
    trainer builds a new wrapper whenever freezing changes that set. Without
    ``data_parallel`` (a weighting that averages gradients over ranks itself) the ranks only
    start from rank 0's weights, as DDP would make them.
    """
    runner: nn.Module = model
    if distributed.is_active() and not data_parallel:
        distributed.broadcast_module(model)
    elif distributed.is_active():
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        runner = DistributedDataParallel(model, device_ids=ids)  # buffers synced per forward
    if trainer.compile:
        runner = torch.compile(runner)  # type: ignore[assignment]
    return runner
