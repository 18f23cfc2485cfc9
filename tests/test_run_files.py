"""What a run folder's files say: every JSON file is strict JSON (a NaN loss included), a
damaged metrics.jsonl neither stops a resume nor the report, and the throughput results.json
gives is not a noise pick on short runs."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from helpers import RECIPE, interrupted_copy, tiny_run, tiny_run_args
from rich.console import Console
from torch import nn

import mtkd
from mtkd.cli import main
from mtkd.context import LoopState
from mtkd.runs.pipeline import throughput
from mtkd.runs.report import write_report
from mtkd.utils.checkpoint import write_json


@pytest.fixture(autouse=True)
def _wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "2000")  # rich wraps at the terminal width


def _refuse(constant: str) -> Any:
    raise ValueError(f"not strict JSON: {constant}")


def strict(text: str) -> Any:
    """``json.loads`` that refuses NaN, Infinity and -Infinity, as every non-Python reader does."""
    return json.loads(text, parse_constant=_refuse)


class NanWhenEvaluated(mtkd.Task):
    """Trains like an identification head, and scores NaN on every evaluation after
    training (on_train_end): validation stays finite, so the run finishes, and the test
    losses are NaN."""

    name = "nan_when_evaluated"
    label_key = "identity"
    trained = False

    def build_head(self, features: mtkd.FeatureInfo) -> nn.Module:
        return nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(features.final_channels, 4)
        )

    def loss(self, output: Any, target: torch.Tensor, head: nn.Module) -> torch.Tensor:
        loss = F.cross_entropy(output, target)
        return loss if head.training or not NanWhenEvaluated.trained else loss * math.nan


class Plugin:
    @mtkd.hookimpl
    def register_tasks(self, register: Any) -> None:
        register(NanWhenEvaluated)

    @mtkd.hookimpl
    def on_train_end(self, context: Any) -> None:
        NanWhenEvaluated.trained = True


# -- strict JSON ------------------------------------------------------------------------------


def test_every_json_file_of_a_run_with_a_nan_loss_is_strict_json(tmp_path: Path) -> None:
    plugins = mtkd.load_plugins(objects=[("nan_plugin", Plugin())])
    NanWhenEvaluated.trained = False
    args = tiny_run_args(**{"tasks.nan_when_evaluated.weight": 1.0})
    cfg = mtkd.load_recipe(RECIPE, [*args, f"output.dir={tmp_path / 'run'}"])
    run = mtkd.run(cfg, plugins=plugins, console=Console(quiet=True)).run_dir
    mtkd.export_run(run, "torchscript", console=Console(quiet=True), plugins=plugins)
    files = sorted(p for p in run.rglob("*") if p.suffix in (".json", ".jsonl"))
    names = {str(p.relative_to(run)) for p in files}
    assert {"results.json", "checkpoints/last/state.json", "export/export.json"} <= names
    for path in files:
        lines = path.read_text().splitlines() if path.suffix == ".jsonl" else [path.read_text()]
        for line in lines:
            strict(line)  # raises on a bare NaN or Infinity, naming it
    results = strict((run / "results.json").read_text())
    assert results["test"]["full"]["loss"] is None  # NaN, written as null and listed
    assert "test.full.loss" in results["non_finite"]
    # a checkpoint before any finite epoch holds best_value +Inf: written as null, and read
    # back as +Inf, so any finite epoch is a best
    fresh = tmp_path / "state.json"
    write_json(fresh, LoopState().to_dict())
    state = strict(fresh.read_text())
    assert state["best_value"] is None and state["best_epoch"] == -1
    assert LoopState.from_dict(state).best_value == math.inf


# -- a damaged metrics.jsonl ------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_run(tmp_path_factory.mktemp("files") / "done")


def test_resume_rebuilds_a_truncated_metrics_log_from_the_checkpoint(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = interrupted_copy(finished, tmp_path / "killed")
    log = run / "metrics.jsonl"
    good = log.read_text()
    log.write_text(good[: len(good) - 40])  # cut mid-line, as a full disk would leave it
    assert main(["resume", str(run)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "metrics.jsonl' is damaged: line 2 not readable JSON" in out
    assert "rewritten from the checkpoint's copy of the 2 epochs" in out
    assert log.read_text() == good  # every epoch back, exactly as logged
    assert json.loads((run / "results.json").read_text())["epochs_run"] == 2


def test_report_on_a_garbage_metrics_log_shows_what_it_can_and_says_so(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = Path(shutil.copytree(finished, tmp_path / "run"))
    log = run / "metrics.jsonl"
    first = log.read_text().splitlines()[0]
    log.write_text(first + "\n\x00\x00garbage{\n")
    assert main(["report", str(run)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "warning:" in out and "metrics.jsonl' is damaged: line 2 not readable JSON" in out
    page = (run / "report.html").read_text()
    assert "is damaged: line 2" in page
    assert "Every epoch" in page  # the readable epoch is still shown
    write_report(run)  # the library call too


# -- throughput -------------------------------------------------------------------------------


def _epochs(*speeds: float) -> list[dict[str, Any]]:
    return [{"epoch": i + 1, "time_train_images_per_s": s} for i, s in enumerate(speeds)]


def test_throughput_of_short_runs_is_the_mean_after_the_warm_up_epoch() -> None:
    assert throughput(_epochs(50.0, 90.0)) == (90.0, "epoch 2 (epoch 1 warms up)")
    assert throughput(_epochs(50.0, 90.0, 100.0)) == (95.0, "mean of epochs 2-3 (epoch 1 warms up)")
    assert throughput(_epochs(50.0)) == (50.0, "epoch 1 only (includes warm-up)")
    assert throughput(_epochs(50.0, 90.0, 100.0, 95.0)) == (95.0, "median of 4 epochs")
    assert throughput([]) == (None, None)


def test_results_say_what_the_throughput_is_taken_over(finished: Path) -> None:
    results = json.loads((finished / "results.json").read_text())
    log = [json.loads(line) for line in (finished / "metrics.jsonl").read_text().splitlines()]
    assert results["train_images_per_s"] == log[1]["time_train_images_per_s"]  # not epoch 1's
    assert results["train_images_per_s_from"] == "epoch 2 (epoch 1 warms up)"
