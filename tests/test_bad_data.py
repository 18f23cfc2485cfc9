"""Bad data through every folder adapter and the engine: truncated and zero-byte images,
masks of the wrong size, unknown mask colours, non-image files and a person with one image.
Each gives the documented error naming the file (data.on_error=fail) or a skip that is counted
(data.on_error=skip) — never a crash from deep inside PIL or torch, never silent loss."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from omegaconf import DictConfig
from PIL import Image

import mtkd

PALETTE = {"background": [0, 0, 0], "skin": [128, 128, 128], "hair": [255, 255, 0]}


def image(seed: int, size: int = 24) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)


def mask(size: int = 24, colour: tuple[int, ...] = (128, 128, 128)) -> np.ndarray:
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


ADAPTERS: dict[str, tuple[dict[str, Any], bool, bool]] = {
    # options, has masks, masks hold class indices
    "identity_folder": ({"images": "images"}, False, False),
    "palette_folder": ({"palette": PALETTE}, True, False),
    "index_folder": ({"classes": ["background", "skin"]}, True, True),
}


def recipe(name: str, root: Path, policy: str, **extra: Any) -> DictConfig:
    options = ADAPTERS[name][0]
    if ADAPTERS[name][1]:  # a bad mask fails its sample, as data.on_error says
        options = {"bad_masks": "fail", **options, **extra}
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
    groups = data.cached.groups
    assert groups is not None  # a folder of people has groups
    assert solo in groups[data.train.indices]  # a one-image person still trains


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_bad_files_stop_the_run_naming_the_file(name: str, tmp_path: Path) -> None:
    faults = faulty_tree(tmp_path / "data", *ADAPTERS[name][1:])
    with pytest.raises(mtkd.DataError) as caught:
        mtkd.build_data(recipe(name, tmp_path / "data", "fail"))
    message = str(caught.value)
    assert any(str(path) in message or path.name in message for path in faults.values())
    assert "data.on_error=skip" in message


@pytest.mark.parametrize("name", ["palette_folder", "index_folder"])
def test_a_bad_mask_costs_only_the_mask_by_default(name: str, tmp_path: Path) -> None:
    """Issue 27, item 3: a mask of the wrong size or with far colours is dropped and counted;
    its image and identity stay."""
    faults = faulty_tree(tmp_path / "data", *ADAPTERS[name][1:])
    data = mtkd.build_data(recipe(name, tmp_path / "data", "skip", bad_masks="drop"))
    report = data.report
    assert sum(report.skipped.values()) == len(faults) - 2  # only the two unreadable images
    assert report.kept == 15  # the two photos with bad masks are kept
    colours = "bad_classes" if name == "index_folder" else "far_colours"
    assert report.source_counts["masks_dropped"] == {"wrong_size": 1, colours: 1}
    assert int(data.cached.present["identity"].sum()) == 15
    assert int(data.cached.present["mask"].sum()) == 13
    assert any("masks_dropped: " in line and "wrong_size 1" in line for line in report.lines())


def test_a_run_that_reads_no_mask_never_decodes_one(tmp_path: Path) -> None:
    """Issue 27, item 3: an identification-only recipe is not stopped by a mask defect (even
    with bad_masks=fail), and its cache is not the cache of a run that reads masks."""
    faulty_tree(tmp_path / "data", with_masks=True)
    identification_only = recipe("palette_folder", tmp_path / "data", "skip")
    identification_only.tasks = {"identification": {}}
    identification_only.data.cache = "disk"
    identification_only.data.cache_dir = str(tmp_path / "cache")
    data = mtkd.build_data(identification_only)
    assert data.report.kept == 15 and "mask" not in data.cached.present  # no mask decoded
    counts = data.report.source_counts
    assert counts["masks_not_read"] == counts["samples_with_mask"] == 17  # 2 unreadable photos
    with_masks = identification_only.copy()
    with_masks.tasks = {"identification": {}, "segmentation": {"role": "teacher"}}
    seg = mtkd.build_data(with_masks)
    assert not seg.report.from_cache  # another cache key: this cache holds the masks
    assert seg.report.kept == 13 and int(seg.cached.present["mask"].sum()) == 13


# --- one line, never a traceback (issue 16) ---------------------------------------------------

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def tiny_run(tmp: Path, *extra: str) -> list[str]:
    """`mtkd run` arguments for a seconds-long run on random images, with ``extra`` overrides."""
    return [
        "run",
        str(RECIPES / "mobilenetv2_id.yaml"),
        "encoder.name=test_efficientnet",
        "data.dataset.name=random_images",
        "data.dataset.identities=4",
        "data.dataset.views=6",
        "data.image_size=32",
        "data.batch_size=8",
        "trainer.max_epochs=1",
        "trainer.progress=false",
        "evaluate.latency=false",
        f"output.root={tmp / 'runs'}",
        *extra,
    ]


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run the command; it must fail with status 2 and an error, not a traceback."""
    from mtkd.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return " ".join(err.split())  # rich wraps long lines at the terminal's width


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("data.batch_size=0", "data.batch_size: must be 1 or more, got 0"),
        ("data.batch_size=-4", "data.batch_size: must be 1 or more, got -4"),
        ("data.eval_batch_size=0", "data.eval_batch_size: must be 1 or more"),
        ("data.num_workers=-1", "data.num_workers: must be 0 or more"),
        ("data.image_size=0", "data.image_size: must be 1 or more, got 0"),
        ("data.resize=stretch", "data.resize: 'stretch' is not one of squash"),
    ],
)
def test_impossible_data_sizes_are_one_line_errors_naming_the_key(
    override: str, named: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert named in one_line_error(capsys, tiny_run(tmp_path, override))


def test_synthetic_heads_at_image_size_zero_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [*tiny_run(tmp_path, "data.image_size=0"), "data.dataset.name=synthetic_heads"]
    assert "data.image_size" in one_line_error(capsys, argv)  # was a ZeroDivisionError


def test_an_image_size_the_encoder_cannot_take_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = tiny_run(tmp_path, "encoder.name=inception_v3", "data.cache=memory")
    message = one_line_error(capsys, argv)
    assert "encoder: 'InceptionV3' cannot run at data.image_size=32" in message


def test_corrupt_cache_files_are_rebuilt_with_a_one_line_notice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mtkd.cli import main

    argv = tiny_run(tmp_path, "data.cache=disk", f"data.cache_dir={tmp_path / 'cache'}")
    mtkd.build_data(mtkd.load_recipe(argv[1], argv[2:]))  # the cache the run will look for
    (folder,) = [p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]
    images = folder / "images.npy"
    images.write_bytes(images.read_bytes()[: images.stat().st_size // 2])  # a truncated file
    assert main(argv) == 0
    out = "".join(capsys.readouterr().out.split())  # rich wraps lines, even inside words
    assert f"samplecache'{folder}':images.npycannotberead" in out and "rebuilding" in out
