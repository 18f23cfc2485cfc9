"""Shared fixtures: tiny recipes that train in a second on the CPU."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import DictConfig
from rich.console import Console

import mtkd

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"

torch.set_num_threads(2)


def tiny_overrides(tmp: Path, **extra: Any) -> list[str]:
    """Dot-list overrides that shrink any recipe to a one-epoch smoke run."""
    values: dict[str, Any] = {
        "data.dataset.name": "random_images",  # the fastest; synthetic heads have their own tests
        "data.image_size": 32,
        "data.batch_size": 8,
        "data.dataset.identities": 4,
        "data.dataset.views": 6,
        "trainer.max_epochs": 1,
        "trainer.progress": False,
        "output.root": str(tmp / "runs"),
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


@pytest.fixture
def tiny_recipe(tmp_path: Path) -> Callable[..., DictConfig]:
    """``tiny_recipe("seg_distilled_id", **overrides)`` loads a real recipe at smoke size."""

    def load(name: str = "seg_distilled_id", **extra: Any) -> DictConfig:
        if name == "seg_distilled_id":
            extra.setdefault("encoder.name", "mobilenetv2_035")
        return mtkd.load_recipe(RECIPES / f"{name}.yaml", tiny_overrides(tmp_path, **extra))

    return load


@pytest.fixture(autouse=True)
def _isolated_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """Every installed plugin loads, and the sample cache lives in a per-session folder."""
    monkeypatch.delenv("MTKD_PLUGINS", raising=False)
    monkeypatch.setenv("MTKD_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "sample-cache"))
    yield


def run_tiny_synthetic(root: Path, *overrides: str) -> mtkd.RunResult:
    """The paper's recipe on the tiny synthetic-heads profile, quietly (seconds on a CPU)."""
    cfg = mtkd.load_recipe(
        RECIPES / "seg_distilled_id.yaml",
        [
            "encoder.name=mobilenetv2_035",  # same module names as mobilenetv2_100: taps resolve
            "trainer.progress=false",
            "data.cache=memory",
            f"output.root={root}",
            *overrides,
        ],
        overlays=[RECIPES / "profiles" / "tiny.yaml"],
    )
    return mtkd.run(cfg, console=Console(quiet=True))


def label_spaces(identities: int = 5, classes: int = 4) -> dict[str, mtkd.LabelSpace]:
    return {
        "identity": mtkd.LabelSpace(tuple(f"id{i}" for i in range(identities))),
        "mask": mtkd.LabelSpace(tuple(f"c{i}" for i in range(classes))),
    }


def assert_same_identification(
    model: mtkd.MultiTaskModel, student: mtkd.MultiTaskModel, size: int = 64
) -> None:
    """The distilled student's identification outputs equal the full model's, bit for bit."""
    images = torch.rand(3, 3, size, size)
    with torch.no_grad():
        full = model(images)["identification"]
        lean = student(images)["identification"]
    torch.testing.assert_close(lean["logits"], full["logits"], rtol=0, atol=0)
    torch.testing.assert_close(lean["embedding"], full["embedding"], rtol=0, atol=0)
