"""dlib_face_crop: box arithmetic, label alignment and fallbacks with a fake detector; dlib itself
on synthetic heads and (when the shared data is present) on the ORL faces."""

from __future__ import annotations

import ast
import pickle
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mtkd_plugins import face_crop
from mtkd_plugins.face_crop import (
    Detection,
    FaceCrop,
    FaceCropOptions,
    centre_box,
    crop,
    square_box,
)
from mtkd_plugins.synthetic_heads.render import CLASS_NAMES, render_view, sample_identities
from PIL import Image

import mtkd
from mtkd.config import parse_options

ORL = Path(__file__).resolve().parents[2] / "shared" / "data" / "orl_faces"


class FakeDetector:
    """Returns fixed faces and remembers what it was asked."""

    def __init__(self, *faces: Detection) -> None:
        self.faces = list(faces)
        self.calls: list[tuple[tuple[int, ...], int, float]] = []

    def __call__(self, image: np.ndarray, upsample: int, min_score: float) -> list[Detection]:
        self.calls.append((image.shape, upsample, min_score))
        return self.faces


def face(left: int, top: int, right: int, bottom: int, score: float = 1.0) -> Detection:
    return Detection((left, top, right, bottom), score)


def make(*faces: Detection, **options: Any) -> FaceCrop:
    options.setdefault("lift", 0.0)
    return FaceCrop(FaceCropOptions(**options), 128, detector=FakeDetector(*faces))


# --- box arithmetic -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("box", "margin", "lift", "expected"),
    [
        ((10, 20, 50, 60), 0.25, 0.0, (0, 10, 60, 70)),  # 40 * 1.5 = 60, centred on (30, 40)
        ((50, 50, 150, 150), 0.4, 0.0, (10, 10, 190, 190)),  # 100 * 1.8 = 180 around (100, 100)
        ((10, 10, 30, 50), 0.0, 0.0, (0, 10, 40, 50)),  # 20 x 40 -> 40 square, same centre
        ((0, 0, 4, 2), 0.0, 0.0, (0, -1, 4, 3)),  # wider than tall: grows up and down
        ((0, 0, 3, 3), 0.0, 0.0, (0, 0, 3, 3)),  # half pixels round up, never to even
        ((10, 20, 50, 60), 0.25, 0.25, (0, 0, 60, 60)),  # lift 0.25 * 40 = 10 px up
    ],
)
def test_square_box(
    box: tuple[int, int, int, int], margin: float, lift: float, expected: tuple[int, ...]
) -> None:
    assert square_box(box, margin, lift) == expected


def test_centre_box() -> None:
    assert centre_box(100, 60) == (0, 20, 60, 80)
    assert centre_box(60, 101) == (20, 0, 80, 60)


def test_crop_pads_at_borders_without_shifting() -> None:
    a = np.arange(16, dtype=np.uint8).reshape(4, 4)
    edge = crop(a, (-1, -1, 2, 2), "edge")
    np.testing.assert_array_equal(edge, [[0, 0, 1], [0, 0, 1], [4, 4, 5]])
    black = crop(a, (-1, -1, 2, 2), "black")
    np.testing.assert_array_equal(black, [[0, 0, 0], [0, 0, 1], [0, 4, 5]])
    right = crop(a, (2, 2, 6, 6), "black")
    np.testing.assert_array_equal(right[:2, :2], [[10, 11], [14, 15]])
    assert right.shape == (4, 4) and not right[2:].any() and not right[:, 2:].any()


def test_crop_keeps_channels_copies_and_survives_a_box_off_the_image() -> None:
    rgb = np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    inside = crop(rgb, (2, 2, 6, 6))
    np.testing.assert_array_equal(inside, rgb[2:6, 2:6])
    assert not np.shares_memory(inside, rgb)  # a cached crop must not pin the full image
    assert crop(rgb, (-2, 0, 10, 12)).shape == (12, 12, 3)
    outside = crop(rgb, (20, 20, 25, 25))
    assert outside.shape == (5, 5, 3) and not outside.any()


# --- the preprocessor with a fake detector --------------------------------------------------


def test_image_and_labels_share_one_box() -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 200, (100, 120, 3), dtype=np.uint8)
    mask = np.zeros((100, 120), dtype=np.uint8)
    image[30:50, 40:70] = 255  # a known rectangle, marked in both
    mask[30:50, 40:70] = 3
    depth = rng.random((100, 120)).astype(np.float32)
    # face box 30 x 20 at (40, 30); margin 0.5 -> 60 square around (55, 40): (25, 10, 85, 70)
    step = make(face(40, 30, 70, 50), margin=0.5)
    sample = {"image": image, "mask": mask, "depth": depth, "identity": 7, "pose": np.zeros(3)}
    out = step(sample)
    assert out is not None
    assert out["image"].shape == (60, 60, 3) and out["mask"].shape == (60, 60)
    np.testing.assert_array_equal(out["mask"] == 3, (out["image"] == 255).all(axis=2))
    np.testing.assert_array_equal(out["depth"], depth[10:70, 25:85])
    assert out["identity"] == 7 and out["pose"].shape == (3,)  # not per-pixel: untouched
    assert sample["image"] is image  # the input sample is not modified
    assert step.counts == {"detected": 1}


@pytest.mark.parametrize("pad", ["edge", "black"])
def test_labels_stay_aligned_where_the_box_leaves_the_image(pad: str) -> None:
    image = np.zeros((60, 60, 3), dtype=np.uint8)
    mask = np.zeros((60, 60), dtype=np.uint8)
    image[0:20, 0:20] = 255
    mask[0:20, 0:20] = 1
    step = make(face(0, 0, 20, 20), margin=0.5, pad=pad)  # -> (-10, -10, 30, 30)
    out = step({"image": image, "mask": mask})
    assert out is not None and out["image"].shape == (40, 40, 3)
    np.testing.assert_array_equal(out["mask"] == 1, (out["image"] == 255).all(axis=2))
    # the face stays where the box put it: its corner at (10, 10), not shifted to (0, 0)
    assert out["mask"][10, 10] == 1 and out["mask"][29, 29] == 1 and out["mask"][30, 30] == 0
    assert step.counts == {"detected": 1, "padded": 1}


def test_a_mask_of_another_size_is_an_error() -> None:
    step = make(face(0, 0, 20, 20))
    with pytest.raises(mtkd.DataError, match="mask of shape"):
        step({"image": np.zeros((40, 40, 3), np.uint8), "mask": np.zeros((20, 20), np.uint8)})


def test_fallback_centre() -> None:
    step = make(fallback="centre")
    out = step({"image": np.zeros((100, 60, 3), np.uint8), "mask": np.ones((100, 60), np.uint8)})
    assert out is not None and out["image"].shape == (60, 60, 3) and out["mask"].shape == (60, 60)
    assert step.counts == {"fallback_centre": 1}


def test_fallback_whole() -> None:
    step = make(fallback="whole")
    sample = {"image": np.zeros((100, 60, 3), np.uint8)}
    out = step(sample)
    assert out is not None and out["image"].shape == (100, 60, 3)
    assert step.counts == {"fallback_whole": 1}


def test_fallback_drop_and_counts_over_several_samples() -> None:
    detector = FakeDetector()
    step = FaceCrop(FaceCropOptions(fallback="drop"), 128, detector=detector)
    image = np.zeros((50, 50, 3), np.uint8)
    assert step({"image": image}) is None
    detector.faces = [face(5, 5, 25, 25), face(10, 10, 40, 40)]
    assert step({"image": image}) is not None
    detector.faces = [face(5, 5, 25, 25)]
    assert step({"image": image}) is not None
    assert step.counts == {"dropped": 1, "detected": 2, "multiple_faces": 1, "padded": 2}


@pytest.mark.parametrize(
    ("pick", "expected"),
    [
        ("largest", (0, 0, 40, 40)),
        ("score", (60, 60, 80, 80)),
        ("centre", (40, 40, 60, 60)),
    ],
)
def test_pick_among_several_faces(pick: str, expected: tuple[int, ...]) -> None:
    faces = [face(0, 0, 40, 40, 0.5), face(60, 60, 80, 80, 2.0), face(40, 40, 60, 60, 1.0)]
    step = make(*faces, pick=pick, margin=0.0)
    assert step.crop_box(np.zeros((100, 100, 3), np.uint8)) == expected
    assert step.counts == {"detected": 1, "multiple_faces": 1}


@pytest.mark.parametrize(
    ("shape", "seen"),
    [
        ((40, 30), (40, 30)),  # grey goes to dlib as grey
        ((40, 30, 1), (40, 30)),
        ((40, 30, 3), (40, 30, 3)),
        ((40, 30, 4), (40, 30, 3)),  # alpha is not shown to the detector
    ],
)
def test_grey_and_rgba_images(shape: tuple[int, ...], seen: tuple[int, ...]) -> None:
    detector = FakeDetector(face(5, 5, 25, 25))
    step = FaceCrop(FaceCropOptions(margin=0.0, lift=0.0, upsample=2), 128, detector=detector)
    out = step({"image": np.full(shape, 9, np.uint8)})
    assert detector.calls == [(seen, 2, 0.0)]
    assert out is not None and out["image"].shape == (20, 20, *shape[2:])  # RGBA stays RGBA


def test_non_uint8_image_is_a_data_error() -> None:
    with pytest.raises(mtkd.DataError, match="uint8"):
        make()({"image": np.zeros((40, 40, 3), np.float32)})


def test_max_side_detects_on_a_smaller_copy_and_maps_the_box_back() -> None:
    detector = FakeDetector(face(10, 10, 30, 30))
    step = FaceCrop(FaceCropOptions(max_side=100), 128, detector=detector)
    faces = step.detect(np.zeros((200, 400, 3), np.uint8))
    assert detector.calls[0][0] == (50, 100, 3)
    assert faces == [face(40, 40, 120, 120)]
    step.detect(np.zeros((80, 90, 3), np.uint8))  # already small: not resized
    assert detector.calls[1][0] == (80, 90, 3)


# --- options and registration ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"fallback": "middle"}, "fallback must be one of centre, whole, drop, got 'middle'"),
        ({"pick": "first"}, "pick must be one of largest, score, centre, got 'first'"),
        ({"pad": "mirror"}, "pad must be one of edge, black"),
        ({"margin": -0.1}, "margin must be >= 0"),
        ({"upsample": 9}, "upsample must be 0 to 4"),
        ({"max_side": 40}, "max_side must be >= 80"),
    ],
)
def test_bad_options_name_the_key(values: dict[str, Any], message: str) -> None:
    prefix = "data.preprocess: dlib_face_crop."
    options = parse_options(FaceCropOptions, values, "data.preprocess[0]")
    with pytest.raises(mtkd.RecipeError, match=re.escape(prefix + message)):
        FaceCrop(options, 128)


def test_options_parse_from_a_recipe_mapping() -> None:
    options = parse_options(
        FaceCropOptions, {"margin": 0.3, "fallback": "drop", "max_side": 512}, "data.preprocess[0]"
    )
    assert options == FaceCropOptions(margin=0.3, fallback="drop", max_side=512)
    with pytest.raises(mtkd.RecipeError, match=r"unknown key 'data\.preprocess\[0\]\.margn'"):
        parse_options(FaceCropOptions, {"margn": 0.3}, "data.preprocess[0]")


def test_without_dlib_the_step_fails_before_any_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    real = face_crop.importlib.util.find_spec
    monkeypatch.setattr(
        face_crop.importlib.util, "find_spec", lambda name: None if name == "dlib" else real(name)
    )
    with pytest.raises(mtkd.PluginError, match="pip install dlib-bin"):
        FaceCrop(FaceCropOptions(), 128)
    FaceCrop(FaceCropOptions(), 128, detector=FakeDetector())  # a custom detector needs no dlib


def test_registered_through_its_entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MTKD_PLUGINS", "face_crop")
    plugins = mtkd.load_plugins()
    assert plugins.preprocessors.get("dlib_face_crop", key="data.preprocess[0].name") is FaceCrop


def test_fingerprint_follows_the_options() -> None:
    a = FaceCrop(FaceCropOptions(), 128).fingerprint()
    assert a.startswith("dlib_face_crop:") and "dlib " in a
    assert a != FaceCrop(FaceCropOptions(margin=0.5), 128).fingerprint()


def test_importing_does_not_load_dlib() -> None:
    """dlib is optional and slow to import: only the first detection may import it."""
    tree = ast.parse(Path(face_crop.__file__).read_text())
    for node in tree.body:  # module level only; imports inside functions run on first use
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        assert not any(n.split(".")[0] == "dlib" for n in names)


def test_picklable_for_data_loader_workers() -> None:
    step = FaceCrop(FaceCropOptions(), 128)
    step({"image": np.zeros((90, 90, 3), np.uint8)})  # the dlib detector is built by now
    clone = pickle.loads(pickle.dumps(step))
    assert clone.options == step.options and clone.counts == step.counts


# --- the real detector ----------------------------------------------------------------------


def _frontal_heads(count: int, size: int) -> Sequence[tuple[np.ndarray, np.ndarray]]:
    people = sample_identities(count, 0)
    straight = {"yaw_range": (0.0, 0.0), "pitch_range": (0.0, 0.0), "roll_range": (0.0, 0.0)}
    return [render_view(people, i, 0, size, 0, **straight)[:2] for i in range(count)]


def test_dlib_on_frontal_synthetic_heads() -> None:
    """dlib finds about a third of the stylised frontal heads at 256 px; its box holds the eyes."""
    step = FaceCrop(FaceCropOptions(margin=0.0, lift=0.0), 128)
    eyes = [CLASS_NAMES.index("left_eye"), CLASS_NAMES.index("right_eye")]
    found = 0
    for image, mask in _frontal_heads(8, 256):
        box = step.crop_box(image)
        if box is None:
            continue
        found += 1
        left, top, right, bottom = box
        ys, xs = np.nonzero(np.isin(mask, eyes))
        inside = (xs >= left) & (xs < right) & (ys >= top) & (ys < bottom)
        assert inside.mean() > 0.95, f"box {box} misses the eyes"
    assert found >= 1
    assert step.counts["detected"] == found


@pytest.mark.skipif(not ORL.is_dir(), reason="the shared ORL faces are not on this machine")
def test_dlib_on_orl_faces() -> None:
    files = sorted(ORL.glob("s*/*.pgm"))
    assert len(files) == 400
    step = FaceCrop(FaceCropOptions(fallback="drop"), 128)
    kept = 0
    for path in files:
        out = step({"image": np.asarray(Image.open(path)), "identity": 0})
        if out is not None:
            kept += 1
            assert out["image"].ndim == 2 and out["image"].shape[0] == out["image"].shape[1]
    counts = step.counts
    assert counts["detected"] + counts["dropped"] == len(files)
    assert kept == counts["detected"]
    assert counts["detected"] >= 300  # 396 of 400 with dlib 20.0, upsample 0
