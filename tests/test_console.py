"""The line printed after each epoch: compact by default, every figure on request."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import RECIPES, tiny_overrides
from rich.console import Console

import mtkd
from mtkd.engine.progress import compact_epoch_line, epoch_line

RECORD = {
    "epoch": 3,
    "lr": 0.001,
    "train/loss": 1.5,
    "train/identification/loss": 1.25,
    "train/segmentation/loss": 0.25,
    "val/identification/loss": 1.75,
    "val/identification/top1": 0.5,
    "val/identification/top5": 0.875,
    "val/identification/embedding_active": 0.6,
    "val/segmentation/loss": 0.3,
    "val/segmentation/miou": 0.4,
    "val/segmentation/pixel_accuracy": 0.9,
    "val/loss": 2.05,
    "time_s": 3.5,
    "best": True,
}


def test_the_compact_line_shows_each_tasks_losses_and_only_its_key_metrics() -> None:
    line = compact_epoch_line(RECORD, {"identification": ("top1",), "segmentation": ("miou",)})
    assert "identification[/bold] loss 1.25 / 1.75  top1 0.5" in line
    assert "segmentation[/bold] loss 0.25 / 0.3  miou 0.4" in line
    assert "top5" not in line and "pixel_accuracy" not in line and "embedding_active" not in line
    assert line.endswith("(3.5s) [green]*[/green]")


def test_a_key_metric_the_epoch_did_not_log_is_left_out_not_an_error() -> None:
    record = {k: v for k, v in RECORD.items() if not k.startswith("val/")}  # no validation
    line = compact_epoch_line(record, {"identification": ("top1",)})
    assert "loss 1.25" in line and "top1" not in line and "/ " not in line


def test_a_task_with_nothing_logged_shows_a_dash_and_a_zero_loss_is_shown() -> None:
    record = {**RECORD, "train/segmentation/loss": 0.0}
    line = compact_epoch_line(record, {"segmentation": (), "pose": ("mae",)})
    assert "segmentation[/bold] loss 0 / 0.3" in line and "pose[/bold] —" in line


def test_the_full_line_shows_every_logged_figure() -> None:
    line = epoch_line(RECORD)
    for key in ("val/identification/top5", "val/segmentation/pixel_accuracy", "train/loss"):
        assert key in line


def _printed(tmp_path: Path, *extra: str) -> str:
    cfg = mtkd.load_recipe(RECIPES / "seg_distilled_id.yaml", [*tiny_overrides(tmp_path), *extra])
    console = Console(record=True, width=400)
    mtkd.run(cfg, console=console)
    return console.export_text()


def test_a_run_prints_the_compact_line_and_console_full_restores_every_figure(
    tmp_path: Path,
) -> None:
    compact = _printed(tmp_path / "compact", "evaluate.latency=false", "output.plots=false")
    epoch = next(line for line in compact.splitlines() if line.startswith("epoch 1"))
    assert "top1" in epoch and "miou" in epoch and "pixel_accuracy" not in epoch
    full = _printed(
        tmp_path / "full", "evaluate.latency=false", "output.plots=false", "trainer.console=full"
    )
    epoch = next(line for line in full.splitlines() if line.startswith("epoch 1"))
    assert "val/identification/top1" in epoch and "val/segmentation/pixel_accuracy" in epoch


def test_an_unknown_console_style_is_a_recipe_error_naming_the_key() -> None:
    with pytest.raises(mtkd.RecipeError, match=r"trainer\.console: 'wide' is not one of"):
        mtkd.load_recipe(RECIPES / "mobilenetv2_id.yaml", ["trainer.console=wide"])
