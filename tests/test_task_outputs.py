"""A task that reads a per-pixel label but outputs something else (a point computed from the
mask): figures and logged images draw only what a task says is a class map, a failing figure
is one warning naming the plugin, and export and predict name a vector's components."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import RECIPES, tiny_overrides
from PIL import Image
from rich.console import Console
from torch import nn

import mtkd
from mtkd.deploy.inference import Predictor


class HeadCentre(mtkd.Task):
    """Where the head is: the centre (x, y) in [0, 1] of the mask's non-background pixels."""

    name = "head_centre"
    label_key = "mask"

    @property
    def output_space(self) -> mtkd.LabelSpace:
        return mtkd.LabelSpace(("x", "y"), kind="vector")

    def build_head(self, features: mtkd.FeatureInfo) -> nn.Module:
        return nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(features.final_channels, 2)
        )

    def centres(self, mask: torch.Tensor) -> torch.Tensor:
        inside = (mask > 0).float()  # (B, H, W)
        size = mask.shape[-1]
        grid = (torch.arange(size, dtype=torch.float32, device=mask.device) + 0.5) / size
        count = inside.sum((1, 2)).clamp_min(1)
        x = (inside * grid[None, None, :]).sum((1, 2)) / count
        y = (inside * grid[None, :, None]).sum((1, 2)) / count
        return torch.stack([x, y], 1)

    def loss(self, output: Any, target: torch.Tensor, head: nn.Module) -> torch.Tensor:
        return F.mse_loss(output, self.centres(target))


class BrokenSheet(HeadCentre):
    """Claims to draw a class map, and fails doing it."""

    name = "broken_sheet"

    def class_map(self, output: Any) -> torch.Tensor | None:
        raise RuntimeError("cannot draw this")


class Plugin:
    @mtkd.hookimpl
    def register_tasks(self, register: Any) -> None:
        register(HeadCentre)
        register(BrokenSheet)


def plugins() -> mtkd.PluginSet:
    return mtkd.load_plugins(objects=[("head_centre_plugin", Plugin())])


def centre_run(tmp: Path, task: str, console: Console) -> mtkd.RunResult:
    """One epoch of identification with ``task`` as a student, plots and TensorBoard images
    on (their defaults, and every epoch)."""
    overrides = tiny_overrides(
        tmp,
        **{
            "encoder.name": "test_efficientnet",
            f"tasks.{task}.weight": 1.0,
            "output.plots": "true",
            "output.loggers": "[jsonl,tensorboard]",
            "output.images_every": 1,
            "evaluate.latency": "false",
            "evaluate.verification": "false",
        },
    )
    cfg = mtkd.load_recipe(RECIPES / "mobilenetv2_id.yaml", overrides)
    return mtkd.run(cfg, plugins=plugins(), console=console)


@pytest.fixture(scope="module")
def centre(tmp_path_factory: pytest.TempPathFactory) -> mtkd.RunResult:
    return centre_run(tmp_path_factory.mktemp("centre"), "head_centre", Console(quiet=True))


def test_a_per_pixel_label_with_a_point_output_trains_plots_and_logs_without_a_sheet(
    centre: mtkd.RunResult,
) -> None:
    run = centre.run_dir
    results = json.loads((run / "results.json").read_text())
    assert results["completed"] is True
    assert "head_centre/loss" in results["test"]["distilled"]
    assert (run / "curves.png").is_file()
    assert not list(run.glob("predictions-*.png"))  # a point is not a class map: not drawn
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    assert events.Tags()["images"] == []


def test_the_default_class_map_draws_only_a_map_with_one_channel_per_class() -> None:
    spaces = {"mask": mtkd.LabelSpace(("bg", "a", "b"))}
    task = HeadCentre(
        "head_centre", mtkd.NoOptions(), role="student", weight=1.0, label_space=spaces["mask"]
    )
    assert task.class_map(torch.zeros(2, 2)) is None  # its output space is a vector
    seg = mtkd.Task("seg", mtkd.NoOptions(), role="student", weight=1.0, label_space=spaces["mask"])
    logits = torch.randn(2, 3, 4, 4)
    classes = seg.class_map(logits)
    assert classes is not None and torch.equal(classes, logits.argmax(1))
    assert seg.class_map(torch.randn(2, 5, 4, 4)) is None  # channels are not the classes
    assert seg.class_map(torch.randn(2, 3)) is None  # per image, not per pixel


def test_a_failing_figure_is_one_warning_naming_the_plugin_and_the_run_finishes(
    tmp_path: Path,
) -> None:
    console = Console(record=True, width=300)
    result = centre_run(tmp_path, "broken_sheet", console)
    out = console.export_text()
    line = next(line for line in out.splitlines() if "not drawn" in line)
    assert "predictions-broken_sheet.png of task 'broken_sheet'" in line
    assert f"(plugin {__name__})" in line and "RuntimeError: cannot draw this" in line
    assert out.count("predictions-broken_sheet.png of task") == 2  # logged images, then plots
    results = json.loads((result.run_dir / "results.json").read_text())
    assert results["completed"] is True and (result.run_dir / "curves.png").is_file()


def test_export_and_predict_name_a_vector_outputs_components(
    centre: mtkd.RunResult, tmp_path: Path
) -> None:
    path = mtkd.export_run(
        centre.run_dir, "torchscript", console=Console(quiet=True), plugins=plugins()
    )
    info = json.loads((path.parent / "export.json").read_text())[path.name]
    outputs = {o["name"]: o for o in info["outputs"]}
    assert outputs["head_centre"]["components"] == ["x", "y"]
    assert outputs["head_centre"]["classes"] is None
    assert "components" not in outputs["identification.logits"]
    image = tmp_path / "face.png"
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(image)
    predictor = Predictor(centre.run_dir, task="head_centre", plugins=plugins())
    [prediction] = predictor.predict([image])
    assert [name for name, _ in prediction] == ["x", "y"]
    assert all(isinstance(value, float) for _, value in prediction)
