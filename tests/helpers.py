"""Helpers the tests share: tiny recipes that train in a second on the CPU, small image
trees on disk for the folder plugins, and checks.

Imported as ``from helpers import …`` (pytest puts this folder on the path); fixtures stay
in conftest.py.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from mtkd_plugins.folders import plugin as folders_plugin
from PIL import Image
from rich.console import Console
from torch.utils.data import Dataset

import mtkd

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"


class ListDataset(Dataset[T]):
    """A list as a map-style data set, for handing ready-made samples to a loader."""

    def __init__(self, items: Sequence[T]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> T:
        return self.items[index]


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


def train_quietly(
    cfg: Any, run_dir: Path | None = None, resume: bool = False
) -> tuple[mtkd.MultiTaskModel, mtkd.TrainContext]:
    """Data, a seeded model and ``mtkd.train`` from a recipe, printing nothing."""
    torch.manual_seed(0)
    data = mtkd.build_data(cfg, console=Console(quiet=True))
    model = mtkd.build_model(cfg, data.label_spaces)
    ctx = mtkd.train(model, data, cfg, run_dir=run_dir, console=Console(quiet=True), resume=resume)
    return model, ctx


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


PALETTE = {"background": [0, 0, 0], "skin": [128, 128, 128], "hair": [255, 255, 0]}


@functools.cache
def folder_plugins() -> mtkd.PluginSet:
    """Installed plugins; the folders module is added by hand if its entry point is not."""
    loaded = mtkd.load_plugins()
    if "palette_folder" not in loaded.datasets:
        loaded = mtkd.load_plugins(objects=[("folders", folders_plugin)])
    return loaded


def save_image(path: Path, array: np.ndarray) -> Path:
    """Write ``array`` with Pillow (the format from the suffix), making folders on the way."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def noise(seed: int, height: int = 12, width: int | None = None) -> np.ndarray:
    """A random RGB uint8 image."""
    shape = (height, width or height, 3)
    return np.random.default_rng(seed).integers(0, 255, size=shape, dtype=np.uint8)


def banded_mask(height: int = 12, width: int | None = None, palette: Any = None) -> np.ndarray:
    """A colour mask of horizontal bands, one per palette colour, top to bottom."""
    colours = list((palette or PALETTE).values())
    mask = np.zeros((height, width or height, 3), dtype=np.uint8)
    for colour, rows in zip(colours, np.array_split(np.arange(height), len(colours)), strict=True):
        mask[rows] = np.array(colour, dtype=np.uint8)
    return mask


def people_tree(
    root: Path, people: tuple[str, ...] = ("alice", "bob", "carol"), views: int = 5, **sizes: int
) -> Path:
    """``images/<person>/<view>.png`` with ``masks/<person>/<view>.png`` for every image."""
    for p, person in enumerate(people):
        for v in range(views):
            save_image(root / "images" / person / f"{v}.png", noise(10 * p + v, **sizes))
            save_image(root / "masks" / person / f"{v}.png", banded_mask(**sizes))
    return root


def folder_recipe(name: str, root: Path, **data: Any) -> Any:
    """A recipe reading ``root`` with the folder plugin ``name`` (dataset options under
    ``dataset``, other ``data.*`` keys as keywords), decoded into memory at 16 px."""
    dataset = {"name": name, "root": str(root), **data.pop("dataset", {})}
    values = {"dataset": dataset, "image_size": 16, "cache": "memory", **data}
    return mtkd.recipe_from_dict({"data": values})


def build_folder_data(name: str, root: Path, **data: Any) -> mtkd.DataBundle:
    return mtkd.build_data(folder_recipe(name, root, **data), folder_plugins())


# run-folder and weights-file reliability (tests/test_run_folder_safety.py, …)
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


# experiment tracking and the report page (tests/test_tracking.py, test_report_page.py)
# A plugin file that kills its own process at one optimizer step (MTKD_TEST_STOP_AT), as a
# crash or `kill -9` would, so tests can check what a resumed run makes of it.
KILLER = """
import os
import signal

import mtkd


@mtkd.hookimpl
def on_step_end(context, step):
    if step == int(os.environ.get("MTKD_TEST_STOP_AT", "0")):
        os.kill(os.getpid(), signal.SIGKILL)
"""


def mtkd_subprocess(*args: str, stop_at: int = 0, launcher: list[str] | None = None) -> str:
    """Run ``python -m mtkd ARGS`` (or ``launcher + ARGS``); returns stdout + stderr.

    With ``stop_at``, a recipe plugin file written by :func:`killer_plugin` kills the process
    at that step, and the kill is what is expected; otherwise the command must succeed."""
    env = {**os.environ, "MTKD_TEST_STOP_AT": str(stop_at), "OMP_NUM_THREADS": "1"}
    command = (launcher or [sys.executable, "-m", "mtkd"]) + list(args)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    expected = -signal.SIGKILL if stop_at else 0
    assert done.returncode == expected, output[-4000:]
    return output


def killer_plugin(folder: Path) -> Path:
    path = folder / "killer.py"
    path.write_text(KILLER)
    return path


Cell = tuple[str, float | None]  # (text, the data-value attribute as a number, if any)


class _TableReader(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[Cell]]] = {}
        self.headers: dict[str, list[str]] = {}
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._value: float | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "table":
            self._table = attributes.get("id") or f"table{len(self.tables)}"
            self.tables[self._table], self.headers[self._table] = [], []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th"):
            self._cell = []
            raw = attributes.get("data-value")
            self._value = float(raw) if raw is not None else None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            text = "".join(self._cell).strip()
            if tag == "th":
                self.headers[self._table].append(text)
            else:
                self.tables[self._table][-1].append((text, self._value))
            self._cell = None
        elif tag == "table":
            rows = self.tables[self._table or ""]
            self.tables[self._table or ""] = [r for r in rows if r]  # drop header-only rows
            self._table = None


def html_tables(text: str) -> tuple[dict[str, list[list[Cell]]], dict[str, list[str]]]:
    """The page's tables by id: body rows of (text, data-value) cells, and the headers."""
    reader = _TableReader()
    reader.feed(text)
    return reader.tables, reader.headers
