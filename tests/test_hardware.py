"""Hardware options of the trainer: memory format, precision, compile, SyncBatchNorm undo."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from torch import nn

import mtkd
from mtkd.engine import hardware

QUIET = Console(quiet=True)


def _trainer(**values: object) -> DictConfig:
    base = {"precision": "fp32", "channels_last": True, "compile": False, "sync_batchnorm": True}
    return OmegaConf.create({**base, **values})


def test_an_unknown_precision_names_the_key() -> None:
    with pytest.raises(mtkd.RecipeError, match=r"trainer\.precision: 'fp8' is not one of"):
        hardware.check_options(_trainer(precision="fp8"))


def test_bf16_autocasts_the_forward_and_needs_no_grad_scaler() -> None:
    layer = nn.Linear(4, 3)
    with hardware.autocast(_trainer(precision="bf16"), torch.device("cpu")):
        out = layer(torch.randn(2, 4))
    assert out.dtype == torch.bfloat16
    assert hardware.grad_scaler(_trainer(precision="bf16"), torch.device("cpu")) is None
    assert hardware.grad_scaler(_trainer(precision="fp16"), torch.device("cpu")) is not None


def test_channels_last_applies_to_weights_and_images() -> None:
    conv = nn.Conv2d(3, 4, 3)
    model = nn.Sequential(conv)
    hardware.to_memory_format(model, _trainer())
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    images = hardware.prepare_images(torch.randn(2, 3, 8, 8), _trainer())
    assert images.is_contiguous(memory_format=torch.channels_last)
    plain = hardware.prepare_images(torch.randn(2, 3, 8, 8), _trainer(channels_last=False))
    assert plain.is_contiguous()


def test_sync_batchnorm_is_undone_with_its_statistics() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    model.train()
    model(torch.randn(8, 3, 8, 8))  # running statistics move
    model.eval()
    x = torch.randn(2, 3, 8, 8)
    expected = model(x)
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert isinstance(synced[1], nn.SyncBatchNorm)
    plain = hardware.plain_batchnorm(synced)
    assert type(plain.get_submodule("1")) is nn.BatchNorm2d
    assert torch.equal(plain(x), expected)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_a_tiny_run_trains_under_autocast(
    tiny_recipe: Callable[..., DictConfig], precision: str
) -> None:
    cfg = tiny_recipe(**{"trainer.precision": precision, "trainer.max_epochs": 2})
    data = mtkd.build_data(cfg, console=QUIET)
    model = mtkd.build_model(cfg, data.label_spaces)
    ctx = mtkd.train(model, data, cfg, console=QUIET)
    losses = [record["train/loss"] for record in ctx.history]
    assert all(torch.isfinite(torch.tensor(losses)))
    # the trained weights stay fp32 and contiguous for saving and export
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(p.is_contiguous() for p in model.parameters())


def test_channels_last_trains_the_same_model_as_contiguous(
    tiny_recipe: Callable[..., DictConfig],
) -> None:
    """The same computation in another memory layout: only float rounding may differ."""
    losses, params = [], []
    for channels_last in (False, True):
        cfg = tiny_recipe(**{"trainer.channels_last": channels_last})
        data = mtkd.build_data(cfg, console=QUIET)
        torch.manual_seed(0)
        model = mtkd.build_model(cfg, data.label_spaces)
        ctx = mtkd.train(model, data, cfg, console=QUIET)
        losses.append([ctx.history[-1]["train/loss"], ctx.history[-1]["val/loss"]])
        params.append({k: v.detach() for k, v in model.named_parameters()})
    assert losses[1] == pytest.approx(losses[0], rel=1e-3)
    for key, value in params[0].items():  # Adam moves each weight at most ~lr per step
        assert float((value - params[1][key]).abs().max()) < 5e-3, key
