"""Bad data through every folder adapter and the engine: truncated and zero-byte images,
masks of the wrong size, unknown mask colours, non-image files and a person with one image.
Each gives the documented error naming the file (data.on_error=fail) or a skip that is counted
(data.on_error=skip) — never a crash from deep inside PIL or torch, never silent loss."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import mtkd

PALETTE = {"background": [0, 0, 0], "skin": [128, 128, 128], "hair": [255, 255, 0]}


def image(seed: int, size: int = 24) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)


def mask(size: int = 24, colour: tuple[int, int, int] = (128, 128, 128)) -> np.ndarray:
    """A palette mask; as class indices (index_folder) when the colour is a 1-tuple."""
    out = np.zeros((size, size, len(colour)), np.uint8)
    out[size // 2 :] = colour
    return out[:, :, 0] if len(colour) == 1 else out


def save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def faulty_tree(root: Path, with_masks: bool, indices: bool = False) -> dict[str, Path]:
    """Three people with four good views each, one person with a single view, and faults."""
    good, bad = ((1,), (9,)) if indices else ((128, 128, 128), (13, 200, 77))
    for p, person in enumerate(("ann", "ben", "cat")):
        for v in range(4):
            save(root / "images" / person / f"{v}.png", image(10 * p + v))
            if with_masks:
                save(root / "masks" / person / f"{v}.png", mask(colour=good))
    save(root / "images" / "solo" / "0.png", image(99))
    if with_masks:
        save(root / "masks" / "solo" / "0.png", mask(colour=good))
    faults = {
        "truncated": root / "images" / "ann" / "truncated.png",
        "zero_bytes": root / "images" / "ben" / "empty.png",
    }
    faults["truncated"].write_bytes((root / "images" / "ann" / "0.png").read_bytes()[:60])
    faults["zero_bytes"].write_bytes(b"")
    (root / "images" / "cat" / "notes.txt").write_text("not an image")
    if with_masks:
        save(root / "masks" / "ann" / "truncated.png", mask(colour=good))
        save(root / "masks" / "ben" / "empty.png", mask(colour=good))
        save(root / "images" / "cat" / "small_mask.png", image(7))
        save(root / "masks" / "cat" / "small_mask.png", mask(size=10, colour=good))
        save(root / "images" / "ben" / "odd_colour.png", image(8))
        save(root / "masks" / "ben" / "odd_colour.png", mask(colour=bad))
        faults["wrong_size_mask"] = root / "masks" / "cat" / "small_mask.png"
        faults["unknown_colour"] = root / "masks" / "ben" / "odd_colour.png"
    return faults


ADAPTERS = {  # options, has masks, masks hold class indices
    "identity_folder": ({"images": "images"}, False, False),
    "palette_folder": ({"palette": PALETTE}, True, False),
    "index_folder": ({"classes": ["background", "skin"]}, True, True),
}


def recipe(name: str, root: Path, policy: str) -> mtkd.RecipeConfig:
    options = ADAPTERS[name][0]
    return mtkd.recipe_from_dict(
        {
            "data": {
                "dataset": {"name": name, "root": str(root), **options},
                "image_size": 16,
                "on_error": policy,
                "cache": "memory",
            }
        }
    )


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_bad_files_are_skipped_and_counted(name: str, tmp_path: Path) -> None:
    faults = faulty_tree(tmp_path / "data", *ADAPTERS[name][1:])
    data = mtkd.build_data(recipe(name, tmp_path / "data", "skip"))
    report = data.report
    assert report.total == report.kept + sum(report.skipped.values())
    assert sum(report.skipped.values()) == len(faults)  # every fault, and nothing else
    assert report.kept == 13  # 3 people x 4 views + the person with one view
    assert report.source_counts["ignored_non_image_files"] == 1  # counted, not silently dropped
    solo = data.label_spaces["identity"].names.index("solo")
    assert solo in data.cached.groups[data.train.indices]  # a one-image person still trains


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_bad_files_stop_the_run_naming_the_file(name: str, tmp_path: Path) -> None:
    faults = faulty_tree(tmp_path / "data", *ADAPTERS[name][1:])
    with pytest.raises(mtkd.DataError) as caught:
        mtkd.build_data(recipe(name, tmp_path / "data", "fail"))
    message = str(caught.value)
    assert any(str(path) in message or path.name in message for path in faults.values())
    assert "data.on_error=skip" in message
