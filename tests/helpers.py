"""Helpers shared by test modules: small image trees on disk and the folder plugins."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
from mtkd_plugins.folders import plugin as folders_plugin
from PIL import Image

import mtkd

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
