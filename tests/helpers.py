"""Helpers the tests share: tiny recipes that train in a second on the CPU, and checks.

Imported as ``from helpers import …`` (pytest puts this folder on the path); fixtures stay
in conftest.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from rich.console import Console

import mtkd

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"


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
