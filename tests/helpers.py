"""Shared test helpers: a tiny finished run, an interrupted copy of it, a corrupted byte."""

from __future__ import annotations

import shutil
from pathlib import Path

from rich.console import Console

import mtkd

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "mobilenetv2_id.yaml"


def tiny_run_args(**extra: object) -> list[str]:
    """Overrides for a seconds-long identification run on random images (no plots, latency)."""
    values: dict[str, object] = {
        "data.dataset.name": "random_images",
        "data.image_size": 32,
        "data.batch_size": 8,
        "data.dataset.identities": 4,
        "data.dataset.views": 6,
        "encoder.name": "test_efficientnet",
        "trainer.max_epochs": 2,
        "trainer.progress": False,
        "evaluate.latency": False,
        "evaluate.verification": False,
        "output.plots": False,
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def tiny_run(out: Path, **extra: object) -> Path:
    """Train the tiny run into ``out`` (a new folder) and return it."""
    cfg = mtkd.load_recipe(RECIPE, [*tiny_run_args(**extra), f"output.dir={out}"])
    return mtkd.run(cfg, console=Console(quiet=True)).run_dir


def interrupted_copy(finished: Path, out: Path) -> Path:
    """``finished`` as it was when killed after its last epoch's checkpoint: no distilled
    model, no results."""
    shutil.copytree(finished, out)
    (out / "results.json").unlink()
    shutil.rmtree(out / "distilled")
    return out


def flip_byte(path: Path, from_end: int = 9) -> None:
    """Flip one bit near the end of ``path`` in place: inside the last tensor's numbers, so
    the file still parses (as a bad disk sector or a careless edit would leave it)."""
    data = bytearray(path.read_bytes())
    data[-from_end] ^= 0x01
    path.write_bytes(bytes(data))
