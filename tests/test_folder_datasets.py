"""The folder data-set plugins (mtkd_plugins.folders): identity_folder, palette_folder,
index_folder and mut1ny, on tiny image trees written here with Pillow."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import RECIPES, REPO
from mtkd_plugins.folders import plugin as folders_plugin
from PIL import Image
from rich.console import Console

import mtkd

ORL = REPO.parent / "shared" / "data" / "orl_faces"  # real data, absent on most machines
PALETTE = {"background": [0, 0, 0], "skin": [128, 128, 128], "hair": [255, 255, 0]}
SIZE = 8


@functools.cache
def plugins() -> mtkd.PluginSet:
    """Installed plugins; the folders module is added by hand if its entry point is not."""
    loaded = mtkd.load_plugins()
    if "palette_folder" not in loaded.datasets:
        loaded = mtkd.load_plugins(objects=[("folders", folders_plugin)])
    return loaded


def build(name: str, root: Path | str, **options: Any) -> Any:
    cfg = mtkd.recipe_from_dict({"data": {"dataset": {"name": name, "root": str(root), **options}}})
    return mtkd.build_source(cfg, plugins())


def write(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def face(seed: int, grey: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (SIZE, SIZE) if grey else (SIZE, SIZE, 3)
    return rng.integers(0, 255, size=shape, dtype=np.uint8)


def colour_mask(
    colours: Sequence[tuple[int, int, int]] = ((0, 0, 0), (128, 128, 128), (255, 255, 0)),
) -> np.ndarray:
    """Bands of rows in palette colours: the first colour on top, the last at the bottom."""
    mask = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
    for colour, rows in zip(colours, np.array_split(np.arange(SIZE), len(colours)), strict=True):
        mask[rows] = np.array(colour, dtype=np.uint8)
    return mask


def write_csv(path: Path, rows: list[list[Any]]) -> Path:
    path.write_text("\n".join(",".join(str(c) for c in row) for row in rows) + "\n")
    return path


def palette_tree(
    root: Path, people: Iterable[str] = ("alice", "bob", "carol"), views: int = 4
) -> Path:
    """images/<person>/<view>.png with masks/<person>/<view>.png for every image."""
    for p, person in enumerate(people):
        for v in range(views):
            write(root / "images" / person / f"{v}.png", face(10 * p + v))
            write(root / "masks" / person / f"{v}.png", colour_mask())
    return root


@contextmanager
def raises(error: type[Exception], *needles: str) -> Iterator[None]:
    """pytest.raises that also checks the message names every needle (file, key, colour)."""
    with pytest.raises(error) as info:
        yield
    for needle in needles:
        assert needle in str(info.value), (needle, str(info.value))


# --- identity_folder ---------------------------------------------------------------------


def test_identity_folder_indexes_people_in_natural_order_and_counts_non_images(
    tmp_path: Path,
) -> None:
    for person in ("p10", "p2", "p1"):
        for v in range(3):
            write(tmp_path / person / f"{v}.pgm", face(v, grey=True))
    (tmp_path / "README").write_text("not an image")
    (tmp_path / "p2" / "notes.txt").write_text("not an image either")
    (tmp_path / ".DS_Store").write_text("")
    source = build("identity_folder", tmp_path)
    assert len(source) == 9
    assert source.label_spaces == {"identity": mtkd.LabelSpace(("p1", "p2", "p10"))}
    assert list(source.groups()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert source.fixed_split() is None
    sample = source[4]
    assert sample["image"].shape == (SIZE, SIZE) and sample["image"].dtype == np.uint8
    assert sample["identity"] == 1 and "mask" not in sample and "pose" not in sample
    report = source.report()
    assert report["identities"] == 3 and report["ignored_non_image_files"] == 2
    assert report["ignored_hidden"] == 1


def test_identity_and_pose_from_a_file_name_pattern(tmp_path: Path) -> None:
    for name in ("ann_y-30_p10.png", "ann_y15_p0.png", "ben_y0_p-5.png", "thumbs.png"):
        write(tmp_path / name, face(len(name)))
    pattern = r"^(?P<identity>[a-z]+)_y(?P<yaw>-?\d+)_p(?P<pitch>-?\d+)\.png$"
    source = build("identity_folder", tmp_path, pattern=pattern)
    assert source.label_spaces["identity"].names == ("ann", "ben")
    assert source.label_spaces["pose"] == mtkd.LabelSpace(
        ("yaw", "pitch", "roll"), kind="vector", flip=(-1.0, 1.0, -1.0)
    )
    index = next(i for i, e in enumerate(source.entries) if e.image.name.startswith("ann_y-30"))
    sample = source[index]
    assert sample["image"].shape == (SIZE, SIZE, 3)
    assert sample["pose"].dtype == np.float32
    np.testing.assert_array_equal(sample["pose"], [-30.0, 10.0, 0.0])
    assert source.report()["ignored_not_matching_pattern"] == 1


def test_identity_pose_and_split_from_a_csv(tmp_path: Path) -> None:
    for i in range(4):
        write(tmp_path / "faces" / f"{i}.png", face(i))
    rows = [
        ["Image", "identity", "yaw", "pitch", "roll", "split", "comment"],
        ["faces/0.png", "zoe", "10", "0", "5", "train", "ok"],
        ["faces/1.png", "zoe", "", "", "", "validation", ""],
        ["faces\\2.png", "yan", "-20", "1.5", "0", "test", ""],
        ["faces/3.png", "yan", "", "", "", "train", ""],
    ]
    source = build("identity_folder", tmp_path, csv=str(write_csv(tmp_path / "index.csv", rows)))
    assert source.label_spaces["identity"].names == ("yan", "zoe")
    assert list(source.groups()) == [1, 1, 0, 0]
    assert list(source.fixed_split()) == ["train", "val", "test", "train"]
    np.testing.assert_array_equal(source[2]["pose"], [-20.0, 1.5, 0.0])
    assert "pose" not in source[1] and source[1]["identity"] == 1
    report = source.report()
    assert report["samples_with_pose"] == 2 and report["ignored_csv_columns"] == 1


def test_split_and_identity_from_folder_names(tmp_path: Path) -> None:
    for split, people in (("train", ("a", "b")), ("test", ("a", "b"))):
        for person in people:
            write(tmp_path / split / person / "0.png", face(0))
    source = build("identity_folder", tmp_path, pattern=r"^(?P<split>[^/]+)/", identity_level=1)
    assert source.label_spaces["identity"].names == ("a", "b")
    assert sorted(source.fixed_split()) == ["test", "test", "train", "train"]
    assert list(source.groups()) == [0, 1, 0, 1]


def test_root_is_required_and_must_exist(tmp_path: Path) -> None:
    with raises(mtkd.RecipeError, "data.dataset.root"):
        build("identity_folder", "")
    with raises(mtkd.DataError, "data.dataset.root", str(tmp_path / "nope")):
        build("identity_folder", tmp_path / "nope")


def test_an_empty_identity_folder_and_an_empty_tree_are_errors(tmp_path: Path) -> None:
    write(tmp_path / "ann" / "0.png", face(0))
    (tmp_path / "ben").mkdir()
    (tmp_path / "ben" / "info.txt").write_text("no pictures")
    with raises(mtkd.DataError, str(tmp_path / "ben")):
        build("identity_folder", tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README").write_text("")
    with raises(mtkd.DataError, str(empty), "ignored_non_image_files 1"):
        build("identity_folder", empty)


def test_index_and_pattern_option_errors_name_the_file_or_key(tmp_path: Path) -> None:
    write(tmp_path / "ann" / "0.png", face(0))
    no_image = write_csv(tmp_path / "bad.csv", [["path", "identity"], ["ann/0.png", "ann"]])
    with raises(mtkd.DataError, str(no_image), "'image'"):
        build("identity_folder", tmp_path, csv="bad.csv")
    no_identity = write_csv(tmp_path / "ids.csv", [["image", "yaw"], ["ann/0.png", "3"]])
    with raises(mtkd.DataError, str(no_identity), "'identity'"):
        build("identity_folder", tmp_path, csv="ids.csv", identity_from="csv")
    with raises(mtkd.DataError, "data.dataset.csv", "missing.csv"):
        build("identity_folder", tmp_path, csv="missing.csv")
    with raises(mtkd.RecipeError, "data.dataset.pattern", "identity"):
        build("identity_folder", tmp_path, pattern=r"(?P<yaw>\d+)", identity_from="pattern")
    with raises(mtkd.RecipeError, "data.dataset.pattern", "yawn"):
        build("identity_folder", tmp_path, pattern=r"(?P<yawn>\d+)")
    with raises(mtkd.RecipeError, "data.dataset.pattern"):
        build("identity_folder", tmp_path, pattern="(unclosed")
    with raises(mtkd.RecipeError, "data.dataset.identity_from"):
        build("identity_folder", tmp_path, identity_from="filename")


def test_bad_split_or_pose_values_and_a_partial_split_name_the_file(tmp_path: Path) -> None:
    write(tmp_path / "ann" / "train_0.png", face(0))
    write(tmp_path / "ann" / "dev_1.png", face(1))
    with raises(mtkd.DataError, "dev_1.png", "'dev'"):
        build("identity_folder", tmp_path, pattern=r"/(?P<split>[a-z]+)_")
    with raises(mtkd.DataError, "dev_1.png", "no split"):
        build("identity_folder", tmp_path, pattern=r"/(?P<split>train)?_?[a-z]*_\d")
    rows = [["image", "identity", "yaw"], ["ann/train_0.png", "ann", "left"]]
    write_csv(tmp_path / "pose.csv", rows)
    with raises(mtkd.DataError, f"{tmp_path / 'pose.csv'}:2", "yaw 'left'"):
        build("identity_folder", tmp_path, csv="pose.csv")


def test_unreadable_images_fail_in_getitem_with_a_sample_error(tmp_path: Path) -> None:
    write(tmp_path / "ann" / "0.png", face(0))
    (tmp_path / "ann" / "1.png").write_bytes(b"definitely not a png")
    truncated = (tmp_path / "ann" / "0.png").read_bytes()
    (tmp_path / "ann" / "2.png").write_bytes(truncated[: len(truncated) // 2])
    rows = [["image", "identity"], ["ann/0.png", "ann"], ["ann/9.png", "ann"]]
    write_csv(tmp_path / "index.csv", rows)
    source = build("identity_folder", tmp_path)  # indexing opens no file
    assert len(source) == 3 and source[0]["image"].shape == (SIZE, SIZE, 3)
    for index, name in ((1, "1.png"), (2, "2.png")):
        with raises(mtkd.SampleError, name):
            source[index]
    listed = build("identity_folder", tmp_path, csv="index.csv")
    with raises(mtkd.SampleError, "9.png", "not found"):
        listed[1]


# --- palette_folder ----------------------------------------------------------------------


def test_palette_folder_pairs_masks_by_folder_and_stem(tmp_path: Path) -> None:
    root = palette_tree(tmp_path, views=2)
    write(root / "masks" / "alice" / "orphan.png", colour_mask())
    source = build("palette_folder", root, palette=PALETTE)
    assert len(source) == 6
    assert source.label_spaces["mask"].names == ("background", "skin", "hair")
    assert source.label_spaces["identity"].names == ("alice", "bob", "carol")
    sample = source[3]
    assert sample["identity"] == 1 and sample["mask"].dtype == np.uint8
    assert sample["mask"].shape == sample["image"].shape[:2]
    assert sample["mask"][0, 0] == 0 and sample["mask"][SIZE // 2, 0] == 1
    assert sample["mask"][-1, 0] == 2
    report = source.report()
    assert report["samples_with_mask"] == 6 and report["ignored_masks_without_image"] == 1
    assert report["off_palette_pixels"] == 0


def test_palette_snapping_counts_off_palette_pixels_once(tmp_path: Path) -> None:
    root = palette_tree(tmp_path, people=("ann",), views=2)
    mask = colour_mask()
    mask[0, :3] = (10, 6, 0)  # JPEG-like noise on background
    mask[SIZE - 1, :2] = (192, 192, 64)  # anti-aliased hair/skin edge: far from both colours
    write(root / "masks" / "ann" / "1.png", mask)
    source = build("palette_folder", root, palette=PALETTE)
    snapped = source[1]["mask"]
    assert snapped[0, 0] == 0 and snapped[SIZE - 1, 0] in (1, 2)
    source[1]  # decoding again (no cache) does not count twice
    source[0]
    assert source.report()["off_palette_pixels"] == 5
    assert source.report()["masks_decoded"] == 2


def test_a_colour_far_from_the_palette_names_the_file_and_colour(tmp_path: Path) -> None:
    root = palette_tree(tmp_path, people=("ann",), views=1)
    mask = colour_mask()
    mask[:2, :2] = (0, 0, 255)
    write(root / "masks" / "ann" / "0.png", mask)
    source = build("palette_folder", root, palette=PALETTE, bad_masks="fail")
    with raises(mtkd.SampleError, str(root / "masks" / "ann" / "0.png"), "(0, 0, 255)"):
        source[0]
    mask[:2, :2] = (30, 0, 30)  # 42 from black: accepted with a larger tolerance
    write(root / "masks" / "ann" / "0.png", mask)
    with raises(mtkd.SampleError, "(30, 0, 30)", "tolerance"):
        build("palette_folder", root, palette=PALETTE, tolerance=20, bad_masks="fail")[0]
    assert build("palette_folder", root, palette=PALETTE, tolerance=50)[0]["mask"][0, 0] == 0
    mask[:2, :2] = (64, 64, 64)  # a black/skin blend, 111 from both
    write(root / "masks" / "ann" / "0.png", mask)
    assert build("palette_folder", root, palette=PALETTE).report()["samples_with_mask"] == 1
    build("palette_folder", root, palette=PALETTE)[0]
    with raises(mtkd.SampleError, "(64, 64, 64)"):
        build("palette_folder", root, palette=PALETTE, blends=False, bad_masks="fail")[0]


def test_mask_errors_are_sample_errors_naming_the_mask(tmp_path: Path) -> None:
    root = palette_tree(tmp_path, people=("ann",), views=2)
    small = write(root / "masks" / "ann" / "1.png", colour_mask()[:4])
    source = build("palette_folder", root, palette=PALETTE, bad_masks="fail")
    with raises(mtkd.SampleError, str(small), "8x4", "8x8"):
        source[1]
    rows = [["image", "mask"], ["images/ann/0.png", "masks/ann/gone.png"]]
    write_csv(root / "index.csv", rows)
    listed = build("palette_folder", root, palette=PALETTE, csv="index.csv")
    with raises(mtkd.SampleError, "gone.png", "mask file not found"):
        listed[0]


def test_only_some_images_have_masks(tmp_path: Path) -> None:
    root = palette_tree(tmp_path, people=("ann", "ben"), views=2)
    (root / "masks" / "ben" / "0.png").unlink()
    (root / "masks" / "ben" / "1.png").unlink()
    source = build("palette_folder", root, palette=PALETTE)
    assert len(source) == 4 and "mask" in source.label_spaces
    assert "mask" in source[0] and "mask" not in source[2] and source[2]["identity"] == 1
    assert source.report()["images_without_mask"] == 2
    strict = build("palette_folder", root, palette=PALETTE, require_masks=True)
    assert len(strict) == 2 and strict.report()["dropped_without_mask"] == 2
    assert strict.label_spaces["identity"].names == ("ann",)


def test_masks_beside_images_by_pattern_are_not_taken_for_images(tmp_path: Path) -> None:
    for v in range(2):
        write(tmp_path / "ann" / f"{v}.jpg", face(v))
        write(tmp_path / "ann" / f"{v}_label.png", colour_mask())
    source = build(
        "palette_folder",
        tmp_path,
        images="",
        mask_pattern="{dir}/{stem}_label.png",
        palette=PALETTE,
    )
    assert len(source) == 2 and all(e.mask is not None for e in source.entries)
    assert source[1]["mask"].shape == (SIZE, SIZE)
    with raises(mtkd.RecipeError, "data.dataset.mask_pattern", "{folder}"):
        build("palette_folder", tmp_path, images="", mask_pattern="{folder}/x.png", palette=PALETTE)


def test_palette_and_mask_folder_options_are_checked(tmp_path: Path) -> None:
    root = palette_tree(tmp_path, people=("ann",), views=1)
    with raises(mtkd.RecipeError, "data.dataset.palette"):
        build("palette_folder", root)
    with raises(mtkd.RecipeError, "data.dataset.palette.skin"):
        build("palette_folder", root, palette={**PALETTE, "skin": [128, 300, 0]})
    with raises(mtkd.RecipeError, "'background' and 'shadow'"):
        build("palette_folder", root, palette={**PALETTE, "shadow": [0, 0, 0]})
    with raises(mtkd.DataError, "data.dataset.masks", "labels"):
        build("palette_folder", root, palette=PALETTE, masks="labels")


def test_left_right_classes_swap_under_a_flip(tmp_path: Path) -> None:
    root = palette_tree(tmp_path, people=("ann",), views=1)
    palette = {**PALETTE, "left_eye": [0, 255, 0], "right_eye": [0, 128, 0], "eye_left": [9, 9, 9]}
    space = build("palette_folder", root, palette=palette).label_spaces["mask"]
    assert space.flip == (0.0, 1.0, 2.0, 4.0, 3.0, 5.0)


# --- index_folder ------------------------------------------------------------------------


def test_index_folder_reads_class_indices(tmp_path: Path) -> None:
    ids = np.repeat(np.arange(SIZE, dtype=np.uint8)[:, None] % 3, SIZE, axis=1)
    for v in range(2):
        write(tmp_path / "images" / "ann" / f"{v}.jpg", face(v))
        write(tmp_path / "masks" / "ann" / f"{v}.png", ids)
    palette_png = Image.frombytes("P", (SIZE, SIZE), ids.tobytes())  # indices + a palette
    palette_png.putpalette([0, 0, 0, 200, 150, 120, 90, 60, 30])
    palette_png.save(tmp_path / "masks" / "ann" / "1.png")
    source = build("index_folder", tmp_path, classes=["bg", "skin", "hair"])
    assert source.label_spaces["mask"].names == ("bg", "skin", "hair")
    for i in range(2):
        np.testing.assert_array_equal(source[i]["mask"], ids)
        assert source[i]["mask"].dtype == np.uint8


def test_index_folder_on_a_lapa_layout_without_identities(tmp_path: Path) -> None:
    ids = np.ones((SIZE, SIZE), dtype=np.uint8)
    for split in ("train", "val", "test"):
        for n in range(2):
            write(tmp_path / split / "images" / f"{split}{n}.jpg", face(n))
            write(tmp_path / split / "labels" / f"{split}{n}.png", ids)
        (tmp_path / split / "landmarks").mkdir()
        (tmp_path / split / "landmarks" / f"{split}0.txt").write_text("106 points")
    source = build(
        "index_folder",
        tmp_path,
        images="",
        identity_from="none",
        pattern=r"^(?P<split>train|val|test)/",
        mask_pattern="{dir}/../labels/{stem}.png",
        classes=["background", "skin"],
    )
    assert len(source) == 6 and source.groups() is None
    assert set(source.label_spaces) == {"mask"}
    assert sorted(source.fixed_split()) == ["test", "test", "train", "train", "val", "val"]
    assert "identity" not in source[0] and source[0]["mask"].max() == 1
    assert source.report()["ignored_non_image_files"] == 3


def test_index_folder_errors_name_the_file_and_key(tmp_path: Path) -> None:
    ids = np.zeros((SIZE, SIZE), dtype=np.uint8)
    ids[0, 0] = 7
    write(tmp_path / "images" / "ann" / "0.png", face(0))
    bad = write(tmp_path / "masks" / "ann" / "0.png", ids)
    source = build("index_folder", tmp_path, classes=["bg", "skin", "hair"], bad_masks="fail")
    with raises(mtkd.SampleError, str(bad), "class index 7", "data.dataset.classes"):
        source[0]
    write(tmp_path / "masks" / "ann" / "0.png", colour_mask())
    with raises(mtkd.SampleError, str(bad), "palette_folder"):
        source[0]
    with raises(mtkd.RecipeError, "data.dataset.classes"):
        build("index_folder", tmp_path)


# --- mut1ny ------------------------------------------------------------------------------


def mut1ny_tree(root: Path) -> Path:
    """images/<subject>/<n>.jpg with labels/<subject>/<n>.png in community-palette colours."""
    colours = ((0, 0, 0), (128, 128, 128), (255, 0, 0), (0, 128, 128))
    for s, subject in enumerate(("subj_b", "subj_a", "multi")):
        for v in range(2):
            write(root / "images" / subject / f"{v:04d}.jpg", face(10 * s + v))
            write(root / "labels" / subject / f"{v:04d}.png", colour_mask(colours))
    return root


def test_mut1ny_reads_identity_from_label_folders_with_the_community_palette(
    tmp_path: Path,
) -> None:
    root = mut1ny_tree(tmp_path)
    write(root / "images" / "subj_a" / "0009.jpg", face(99))  # no label: counted
    source = build("mut1ny", root, exclude_subjects=["multi"])
    assert len(source) == 4
    assert source.label_spaces["identity"].names == ("subj_a", "subj_b")
    assert len(source.label_spaces["mask"].names) == 11
    assert source.label_spaces["mask"].names[8] == "skin"
    mask = source[0]["mask"]
    assert [mask[0, 0], mask[2, 0], mask[4, 0], mask[-1, 0]] == [0, 8, 1, 10]
    report = source.report()
    assert report["excluded_by_subject"] == 2 and report["ignored_images_without_label"] == 1


def test_mut1ny_xml_index_pairs_images_and_labels(tmp_path: Path) -> None:
    root = mut1ny_tree(tmp_path)
    (root / "training_fixed.xml").write_text(
        "<dataset>\n"
        '  <srcimg name="images\\subj_a\\0000.jpg"/><labelimg name="labels\\subj_a\\0000.png"/>\n'
        '  <srcimg name="images/subj_b/0001.jpg">\n'
        '    <labelimg name="labels/subj_b/0001.png"/>\n'
        "  </srcimg>\n"
        '  <srcimg name="images/subj_b/0000.jpg"/>\n'
        '  <srcimg name="images/subj_a/0001.jpg"/><labelimg name="labels/subj_a/gone.png"/>\n'
        "</dataset>\n"
    )
    source = build("mut1ny", root)
    assert [e.image.name for e in source.entries] == ["0000.jpg", "0001.jpg", "0001.jpg"]
    assert [source[i]["identity"] for i in range(2)] == [0, 1]
    assert source.report()["ignored_images_without_label"] == 1
    with raises(mtkd.SampleError, "gone.png", "not found"):
        source[2]
    by_folders = build("mut1ny", root, xml="none")
    assert len(by_folders) == 6
    with raises(mtkd.DataError, "data.dataset.xml", "other.xml"):
        build("mut1ny", root, xml="other.xml")


def test_mut1ny_takes_a_14_class_palette_from_the_recipe(tmp_path: Path) -> None:
    root = mut1ny_tree(tmp_path)
    fourteen = {
        "background": [0, 0, 0], "lips": [255, 0, 0], "left_eye": [0, 255, 0],
        "right_eye": [0, 128, 0], "nose": [0, 0, 255], "skin": [128, 128, 128],
        "hair": [255, 255, 0], "left_eyebrow": [255, 0, 255], "right_eyebrow": [128, 0, 128],
        "left_ear": [0, 255, 255], "right_ear": [0, 64, 64], "teeth": [255, 255, 255],
        "facial_hair": [255, 192, 192], "spectacles": [0, 128, 128],
    }  # fmt: skip
    source = build("mut1ny", root, palette=fourteen)
    assert source.label_spaces["mask"].names == tuple(fourteen)
    assert source[0]["mask"][2, 0] == 5
    with raises(mtkd.RecipeError, "data.dataset.pattern"):
        build("mut1ny", root, pattern=r"(?P<identity>subj_\w)")


# --- real data and the engine --------------------------------------------------------------


@pytest.mark.skipif(not ORL.is_dir(), reason="the ORL faces are not on this machine")
def test_orl_faces_as_an_identity_folder() -> None:
    source = build("identity_folder", ORL)
    assert len(source) == 400 and len(source.label_spaces["identity"].names) == 40
    assert set(source.label_spaces) == {"identity"}
    assert source.report()["ignored_non_image_files"] == 1  # the README
    sample = source[0]
    assert sample["image"].shape == (112, 92) and "mask" not in sample


def test_a_written_synthetic_data_set_reads_back(tmp_path: Path) -> None:
    export = pytest.importorskip("mtkd_plugins.synthetic_heads.export")
    from mtkd_plugins.synthetic_heads.source import SyntheticHeads, SyntheticHeadsOptions

    options = SyntheticHeadsOptions(identities=2, views=2, views_spread=0)
    export.write_dataset(tmp_path, options, 32, Console(quiet=True))
    import yaml

    overlay = yaml.safe_load((tmp_path / "dataset.yaml").read_text())
    palette = overlay["data"]["dataset"]["palette"]
    source = build("palette_folder", tmp_path, palette=palette, csv="index.csv")
    original = SyntheticHeads(options, image_size=32, seed=0)
    np.testing.assert_array_equal(source[3]["mask"], original[3]["mask"])
    np.testing.assert_allclose(source[3]["pose"], original[3]["pose"], atol=1e-3)
    assert source.report()["off_palette_pixels"] == 0


def test_seg_distilled_id_trains_on_a_palette_folder_with_partial_masks(tmp_path: Path) -> None:
    root = palette_tree(tmp_path / "data", people=("ann", "ben", "cat"), views=4)
    for v in range(4):
        (root / "masks" / "cat" / f"{v}.png").unlink()  # cat trains identification only
    overrides = [
        "encoder.name=mobilenetv2_035",
        "data.image_size=32",
        "data.batch_size=4",
        "trainer.max_epochs=1",
        "trainer.progress=false",
        f"output.root={tmp_path / 'runs'}",
        "data.dataset.name=palette_folder",
        f"data.dataset.root={root}",
        "data.dataset.palette={background: [0,0,0], skin: [128,128,128], hair: [255,255,0]}",
    ]
    cfg = mtkd.load_recipe(RECIPES / "seg_distilled_id.yaml", overrides)
    if "cache" in cfg.data:
        cfg.data.cache = "memory"  # keep the user's disk cache out of the test
    result = mtkd.run(cfg, plugins=plugins(), console=Console(quiet=True))
    full = result.results["test"]["full"]
    assert full["identification/count"] == 3
    assert full["segmentation/count"] == 2
    assert len(full["segmentation/iou"]) == 3
