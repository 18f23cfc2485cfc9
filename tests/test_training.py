"""The training loop: early stopping, best weights, the run folder, lifecycle hooks."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import RECIPES, ListDataset, tiny_overrides
from omegaconf import DictConfig
from rich.console import Console

import mtkd
from mtkd.utils.checkpoint import load_weights


class Recorder:
    """A plugin object implementing every lifecycle hook."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    @mtkd.hookimpl
    def on_train_start(self, context: Any) -> None:
        self.calls.append(("start", context.epoch))

    @mtkd.hookimpl
    def on_epoch_end(self, context: Any, epoch: int, metrics: dict[str, Any]) -> None:
        self.calls.append(("epoch", epoch))
        if epoch == 2:
            context.stop_requested = True

    @mtkd.hookimpl
    def on_train_end(self, context: Any) -> None:
        self.calls.append(("end", len(context.history)))


def test_lifecycle_hooks_are_called_in_order_and_can_stop_training(
    tiny_recipe: Callable[..., DictConfig],
) -> None:
    cfg = tiny_recipe(
        "mobilenetv2_id", **{"encoder.name": "test_efficientnet", "trainer.max_epochs": 5}
    )
    recorder = Recorder()
    plugins = mtkd.load_plugins(objects=[("recorder", recorder)])
    result = mtkd.run(cfg, plugins=plugins, console=Console(quiet=True))
    assert recorder.calls == [("start", 0), ("epoch", 1), ("epoch", 2), ("end", 2)]
    assert result.results["epochs_run"] == 2


def test_early_stopping_restores_the_best_epoch(tiny_recipe: Callable[..., DictConfig]) -> None:
    # a learning rate this large makes validation loss worse after the first epochs
    cfg = tiny_recipe(
        "mobilenetv2_id",
        **{
            "encoder.name": "test_efficientnet",
            "trainer.max_epochs": 30,
            "trainer.patience": 2,
            "trainer.lr": 0.5,
            "trainer.optimizer": "sgd",
        },
    )
    result = mtkd.run(cfg, console=Console(quiet=True))
    history = [
        json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    best = min(history, key=lambda r: r["val/loss"])
    assert result.results["stopped_early"]
    assert len(history) == best["epoch"] + 2  # patience 2 after the best epoch
    assert result.results["best_epoch"] == best["epoch"]
    reloaded = mtkd.build_model(cfg, mtkd.build_data(cfg).label_spaces)
    load_weights(reloaded, result.run_dir / "checkpoints" / "best.safetensors")
    for a, b in zip(
        reloaded.state_dict().values(), result.model.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b.cpu())


def test_run_folder_holds_everything_a_user_needs(tiny_recipe: Callable[..., DictConfig]) -> None:
    cfg = tiny_recipe(**{"trainer.max_epochs": 2})
    result = mtkd.run(cfg, console=Console(quiet=True))
    run_dir: Path = result.run_dir
    assert run_dir.name.startswith("seg_distilled_id-")
    for name in [
        "config.yaml",
        "labels.json",
        "metrics.jsonl",
        "results.json",
        "checkpoints/best.safetensors",
        "checkpoints/last/model.safetensors",
        "checkpoints/last/optimizer.pt",
        "checkpoints/last/state.json",
        "distilled/model.safetensors",
        "distilled/tasks.json",
        "curves.png",
        "confusion-identification.png",
        "predictions-segmentation.png",
    ]:
        assert (run_dir / name).is_file(), name
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2
    results = json.loads((run_dir / "results.json").read_text())
    assert results["removed_tasks"] == ["segmentation"]
    assert results["params"]["inference"]["trainable"] < results["params"]["training"]["trainable"]
    assert "segmentation/miou" in results["test"]["full"]
    assert "segmentation/miou" not in results["test"]["distilled"]
    # the saved inference model rebuilds from the folder alone and answers the same
    student = mtkd.load_run(run_dir)
    images = torch.rand(2, 3, 32, 32)
    result.inference_model.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            student(images)["identification"]["logits"],
            result.inference_model(images)["identification"]["logits"],
        )
    rerun = mtkd.load_recipe(run_dir / "config.yaml")
    assert rerun.tasks.segmentation.role == "teacher"


def test_same_seed_gives_the_same_result(tiny_recipe: Callable[..., DictConfig]) -> None:
    first = mtkd.run(
        tiny_recipe("mobilenetv2_id", **{"encoder.name": "test_efficientnet"}),
        console=Console(quiet=True),
    )
    second = mtkd.run(
        tiny_recipe("mobilenetv2_id", **{"encoder.name": "test_efficientnet"}),
        console=Console(quiet=True),
    )
    assert first.results["test"] == second.results["test"]


def test_metrics_lines_are_strict_json_with_null_for_non_finite_values() -> None:
    """NaN and Inf are not JSON: a reader other than Python's would reject the file."""
    from mtkd.engine.metrics_log import NON_FINITE, json_line

    line = json_line({"epoch": 1, "val/loss": float("nan"), "lr": 0.001, "x": float("inf")})

    def no_constants(name: str) -> None:
        raise AssertionError(f"bare {name} in a JSON line")

    record = json.loads(line, parse_constant=no_constants)
    assert record == {
        "epoch": 1,
        "val/loss": None,
        "lr": 0.001,
        "x": None,
        NON_FINITE: ["val/loss", "x"],
    }
    assert json_line({"epoch": 2, "lr": 0.5}) == json.dumps({"epoch": 2, "lr": 0.5})


def test_resume_cuts_the_metrics_log_back_atomically(tmp_path: Path) -> None:
    """The log is replaced whole (temporary file, then rename), never truncated in place."""
    from mtkd.engine.metrics_log import MetricsLog

    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"epoch": e}) + "\n" for e in (1, 2, 3)))
    inode = path.stat().st_ino
    assert MetricsLog(path).keep_first(2) == ([{"epoch": 1}, {"epoch": 2}], None)
    assert path.read_text().splitlines() == ['{"epoch": 1}', '{"epoch": 2}']
    assert path.stat().st_ino != inode and not (tmp_path / "metrics.jsonl.tmp").exists()


# end to end through mtkd.run; test_data_reliability.py trains the same 42-in-41 case via fit
@pytest.mark.slow
def test_a_last_training_batch_of_one_sample_is_left_out_instead_of_crashing_batchnorm(
    tmp_path: Path,
) -> None:
    """42 training samples in batches of 41: the one left over would reach BatchNorm alone."""
    cfg = mtkd.load_recipe(
        RECIPES / "mobilenetv2_id.yaml",
        tiny_overrides(
            tmp_path,
            **{
                "encoder.name": "mobilenetv2_035",
                "data.dataset.identities": 6,
                "data.dataset.views": 10,
                "data.split.test": 0.1,
                "data.split.val": 0.2,
                "data.batch_size": 41,
                "trainer.max_epochs": 2,
                "evaluate.latency": False,
                "output.plots": False,
            },
        ),
    )
    result = mtkd.run(cfg, console=Console(quiet=True))
    assert result.results["data"]["train"] == 42
    assert result.results["epochs_run"] == 2


def test_every_evaluation_loader_takes_eval_batch_size_else_batch_size() -> None:
    from mtkd.data.build import make_eval_loader

    cfg = mtkd.recipe_from_dict({"data": {"batch_size": 16}})
    assert make_eval_loader(ListDataset(range(40)), cfg.data).batch_size == 16
    cfg.data.eval_batch_size = 64
    loader = make_eval_loader(ListDataset(range(40)), cfg.data)
    assert loader.batch_size == 64
    assert not isinstance(loader.sampler, torch.utils.data.RandomSampler)  # in order
