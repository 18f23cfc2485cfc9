"""The example plugin package docs/examples/mtkd-head-direction: pip-installed, found through its
entry point, trained end to end as a teacher and removed by distillation; its binning, its
use as a student and its option errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import RECIPES, REPO
from safetensors import safe_open

import mtkd

EXAMPLE = REPO / "docs" / "examples" / "mtkd-head-direction"
MODULE = EXAMPLE / "mtkd_head_direction.py"
POSE = mtkd.LabelSpace(("yaw", "pitch", "roll"), kind="vector", flip=(-1, 1, -1))
SPACES = {"identity": mtkd.LabelSpace(tuple(f"id{i}" for i in range(5))), "pose": POSE}


# `mtkd plugins`, then `mtkd run ...`, in one interpreter (one torch import, not two).
CLI = """
import sys
from mtkd.cli import main

status = main(["plugins"])
print("--- run ---", flush=True)
sys.exit(status or main(sys.argv[1:]))
"""


def mtkd_cli(site: Path, cwd: Path, *run_args: str) -> str:
    """``mtkd plugins`` and ``mtkd run *run_args`` with the --target install on the path, as
    after ``pip install``; returns what ``mtkd plugins`` printed."""
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "COLUMNS": "200"}
    env.pop("MTKD_PLUGINS", None)
    done = subprocess.run(
        [sys.executable, "-c", CLI, "run", *run_args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"mtkd failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout.partition("--- run ---")[0]


def tensor_names(path: Path) -> set[str]:
    with safe_open(str(path), "pt") as weights:
        return set(weights.keys())


@pytest.mark.slow
def test_installed_package_is_found_and_trains_as_a_teacher(tmp_path: Path) -> None:
    pytest.importorskip("setuptools")  # the build backend, used without build isolation
    source, site = tmp_path / "src", tmp_path / "site"
    shutil.copytree(EXAMPLE, source)  # the build writes build/ and *.egg-info next to it
    pip = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation"]
    subprocess.run(
        [*pip, "--no-index", "--quiet", "--target", str(site), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    assert (site / "mtkd_head_direction.py").is_file()

    run_dir = tmp_path / "run"
    listed = mtkd_cli(
        site,
        tmp_path,
        str(EXAMPLE / "head_direction_teacher.yaml"),
        str(RECIPES / "profiles" / "tiny.yaml"),
        "encoder.name=test_efficientnet",
        "trainer.max_epochs=1",
        "trainer.progress=false",
        "data.cache=memory",
        "evaluate.latency=false",
        "output.plots=false",
        "--out",
        str(run_dir),
    )
    assert "head_direction  (entry point mtkd_head_direction)" in listed
    assert "tasks: head_direction" in listed
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 1
    assert records[0]["train/head_direction/loss"] > 0
    assert 0 <= records[0]["val/head_direction/accuracy"] <= 1
    results = json.loads((run_dir / "results.json").read_text())
    assert 0 <= results["test"]["full"]["head_direction/accuracy"] <= 1
    assert "head_direction/accuracy" not in results["test"]["distilled"]
    assert "identification/top1" in results["test"]["distilled"]
    assert results["removed_tasks"] == ["head_direction"]
    assert results["params"]["inference"]["total"] < results["params"]["training"]["total"]
    trained = tensor_names(run_dir / "checkpoints" / "best.safetensors")
    distilled = tensor_names(run_dir / "distilled" / "model.safetensors")
    assert any(k.startswith("heads.head_direction.") for k in trained)
    assert not any("head_direction" in k for k in distilled)
    assert any(k.startswith("heads.identification.") for k in distilled)


def model_with(plugins: mtkd.PluginSet, *extra: str) -> mtkd.MultiTaskModel:
    cfg = mtkd.load_recipe(
        RECIPES / "pose_distilled_id.yaml",
        ["encoder.name=test_efficientnet", "data.image_size=32", *extra],
    )
    torch.manual_seed(0)
    return mtkd.build_model(cfg, SPACES, plugins)


def test_bins_yaw_and_serves_as_a_student() -> None:
    plugins = mtkd.load_plugins([str(MODULE)])
    model = model_with(plugins, "tasks.head_direction={role: student, threshold: 20}")
    task: Any = model.tasks["head_direction"]  # the example's HeadDirection
    assert task.label_key == "pose" and task.role == "student"
    assert task.output_space is not None and task.output_space.names == ("left", "frontal", "right")
    assert task.label_space is not None and task.label_space.kind == "vector"  # the data's pose
    yaw = torch.tensor([-90.0, -20.5, -20.0, 0.0, 20.0, 20.5, 90.0])
    pose = torch.stack([yaw, torch.full_like(yaw, 30.0), torch.full_like(yaw, -10.0)], dim=1)
    assert task.directions(pose).tolist() == [0, 0, 1, 1, 1, 2, 2]

    logits = model(torch.rand(7, 3, 32, 32))["head_direction"]
    assert logits.shape == (7, 3)
    assert model.task_loss("head_direction", logits, pose).item() > 0
    perfect = torch.nn.functional.one_hot(task.directions(pose), 3).float() * 10
    metrics = task.metrics()
    task.update_metrics(metrics, perfect, pose)
    assert task.summarize(metrics)["accuracy"].item() == 1.0

    kept = mtkd.distill(model, plugins)
    assert {"identification", "head_direction"} <= set(kept.tasks)
    assert "pose" not in kept.tasks  # the recipe's pose teacher goes, the student stays


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("threshold: 0", r"tasks\.head_direction\.threshold: 0\.0 must be > 0"),
        ("component: tilt", r"tasks\.head_direction\.component: 'tilt' .*yaw, pitch, roll"),
    ],
    ids=["threshold", "component"],
)
def test_bad_options_are_recipe_errors(override: str, message: str) -> None:
    plugins = mtkd.load_plugins([str(MODULE)])
    with pytest.raises(mtkd.RecipeError, match=message):
        model_with(plugins, f"tasks.head_direction={{{override}}}")
