"""The synthetic_heads data-set plugin: the default of every recipe, deterministic, labelled."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import RECIPES, run_tiny_synthetic

import mtkd

TINY = RECIPES / "profiles" / "tiny.yaml"


def test_recipes_default_to_synthetic_heads() -> None:
    cfg = mtkd.load_recipe(RECIPES / "seg_distilled_id.yaml")
    assert cfg.data.dataset.name == "synthetic_heads"


def test_views_per_identity_follow_the_options_and_groups_are_identities() -> None:
    cfg = mtkd.load_recipe(
        RECIPES / "mobilenetv2_id.yaml",
        ["data.dataset.identities=5", "data.dataset.views=20", "data.dataset.views_spread=5"],
    )
    source = mtkd.build_source(cfg)
    groups = np.array(source.groups())
    counts = np.bincount(groups)
    assert len(counts) == 5 and counts.min() >= 15 and counts.max() <= 25
    assert len(source) == counts.sum()
    assert source.label_spaces["mask"].num_classes == 14
    assert source.label_spaces["pose"].names == ("yaw", "pitch", "roll")


def test_samples_are_deterministic_and_fully_labelled() -> None:
    overrides = ["data.dataset.identities=3", "data.dataset.views=4", "data.image_size=48"]
    cfg = mtkd.load_recipe(RECIPES / "mobilenetv2_id.yaml", overrides)
    first, second = mtkd.build_source(cfg), mtkd.build_source(cfg)
    a, b = first[7], second[7]
    assert a["image"].shape == (48, 48, 3) and a["mask"].shape == (48, 48)
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["mask"], b["mask"])
    groups = first.groups()
    assert groups is not None and a["identity"] == groups[7]
    yaw, pitch, roll = a["pose"]
    assert -90 <= yaw <= 90 and -40 <= pitch <= 40 and -15 <= roll <= 15


def test_pose_ranges_are_validated() -> None:
    cfg = mtkd.load_recipe(RECIPES / "mobilenetv2_id.yaml", ["data.dataset.yaw_range=[30,-30]"])
    try:
        mtkd.build_source(cfg)
    except mtkd.RecipeError as exc:
        assert "data.dataset.yaw_range" in str(exc)
    else:
        raise AssertionError("an inverted yaw range was accepted")


def test_paper_recipe_trains_on_synthetic_heads(tmp_path: Path) -> None:
    result = run_tiny_synthetic(tmp_path, "data.cache=disk")
    full = result.results["test"]["full"]
    assert full["segmentation/count"] == full["identification/count"] > 0
    assert len(full["segmentation/iou"]) == 14


def test_synth_command_writes_images_palette_masks_and_an_index(tmp_path: Path) -> None:
    import csv

    from mtkd_plugins.synthetic_heads.labels import PALETTE
    from PIL import Image

    from mtkd.cli import main

    out = tmp_path / "heads"
    args = ["synth", str(out), "--identities", "2", "--views", "3", "--views-spread", "0"]
    assert main([*args, "--size", "48"]) == 0
    rows = list(csv.DictReader((out / "index.csv").open()))
    assert len(rows) == 6 and {r["identity"] for r in rows} == {"person_000", "person_001"}
    image = np.asarray(Image.open(out / rows[0]["image"]))
    mask = np.asarray(Image.open(out / rows[0]["mask"]))
    assert image.shape == (48, 48, 3) and mask.shape == (48, 48, 3)
    colours = {tuple(c) for c in mask.reshape(-1, 3).tolist()}
    assert colours <= set(PALETTE) and len(colours) > 3
    assert -90 <= float(rows[0]["yaw"]) <= 90
    assert main([*args, "--size", "48"]) == 2  # never overwrites a written data set
    # the overlay it writes reads the folder back, masks and pose intact
    overlay = [out / "dataset.yaml"]
    cfg = mtkd.load_recipe(RECIPES / "seg_distilled_id.yaml", ["data.image_size=48"], overlay)
    read_back = mtkd.build_source(cfg)
    assert read_back.name == "palette_folder" and len(read_back) == 6
    np.testing.assert_array_equal(np.asarray(read_back[0]["image"]), image)
    assert read_back.report().get("off_palette_pixels", 0) == 0


def test_a_spread_wider_than_the_views_is_clipped_so_counts_stay_near_the_mean() -> None:
    from mtkd_plugins.synthetic_heads.source import SyntheticHeadsOptions, views_per_identity

    few = views_per_identity(SyntheticHeadsOptions(identities=30, views=4, views_spread=50))
    assert min(few) >= 1 and max(few) <= 7  # once 1-54 views: 43 images for 3 x 4
    assert 3 <= sum(few) / len(few) <= 5
    for views, spread in ((200, 50), (60, 0), (48, 8), (20, 5), (4, 3)):
        options = SyntheticHeadsOptions(identities=20, views=views, views_spread=spread, seed=2)
        rng = np.random.default_rng([2, 1_000_003])  # the draw before the clip, unchanged
        before = rng.integers(views - spread, views + spread + 1, size=20).tolist()
        assert views_per_identity(options) == before


def test_synth_prints_how_many_views_each_person_got(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mtkd.cli import main

    args = ["synth", str(tmp_path / "heads"), "--identities", "3", "--views", "4"]
    assert main([*args, "--size", "16"]) == 0
    printed = capsys.readouterr().out.replace("\n", " ")
    assert "views spread 50 clipped to 3" in printed
    assert "person_000" in printed and "person_002" in printed
    written = len(list((tmp_path / "heads" / "images").rglob("*.png")))
    assert f"wrote {written} images" in printed and written <= 3 * 7
    assert main(["synth", str(tmp_path / "zero"), "--size", "0"]) == 2
    assert "--size: must be 1 or more" in capsys.readouterr().err


def _digest(size: int, **options: object) -> str:
    """sha256 over every 12th-or-so sample's image, mask and pose."""
    import hashlib

    from mtkd_plugins.synthetic_heads.source import SyntheticHeads, SyntheticHeadsOptions

    source = SyntheticHeads(SyntheticHeadsOptions(**options), image_size=size, seed=0)
    digest = hashlib.sha256()
    for index in range(0, len(source), max(1, len(source) // 12)):
        sample = source[index]
        for key in ("image", "mask", "pose"):
            digest.update(np.ascontiguousarray(sample[key]).tobytes())
    return digest.hexdigest()


def test_default_options_draw_exactly_the_images_drawn_before_identity_cues_existed() -> None:
    # digests taken before the identity_cues option was added: today's recipes and results
    # draw the very same images, masks and poses
    before = "9f251a6fb5f0efa5eff1a7d4420f19b7ab2dd16dbb98f50094d88dd91663ed53"
    assert _digest(48, identities=12, views=6, views_spread=2) == before
    assert _digest(48, identities=12, views=6, views_spread=2, identity_cues="all") == before
    seeded = "96b697bfc4488f1a97a8e1c110f717eadc6b4572598f7b59d9998b8bed861c8b"
    assert _digest(64, identities=8, views=5, views_spread=0, seed=3) == seeded
    assert _digest(64, identities=8, views=5, views_spread=0, seed=3, identity_cues="geometry") != (
        seeded
    )


def test_geometry_cues_share_skin_hair_and_outline_and_keep_each_persons_face() -> None:
    from mtkd_plugins.synthetic_heads.identity import SHARED_LOOK, sample_identities

    everything = sample_identities(20, seed=1)
    geometry = sample_identities(20, seed=1, cues="geometry")
    for field, value in SHARED_LOOK.items():
        assert {getattr(p, field) for p in geometry} == {value}, field
        assert len({getattr(p, field) for p in everything}) > 1, field  # shared only by option
    face = ("eye_spacing", "eye_size", "nose_size", "lip_size", "ear_size", "jaw_radii")
    for field in face:
        assert [getattr(p, field) for p in geometry] == [getattr(p, field) for p in everything]
        assert len({getattr(p, field) for p in geometry}) == 20  # everyone's own


def test_an_unknown_identity_cues_value_names_the_key() -> None:
    cfg = mtkd.load_recipe(RECIPES / "mobilenetv2_id.yaml", ["data.dataset.identity_cues=face"])
    with pytest.raises(mtkd.RecipeError, match=r"data\.dataset\.identity_cues: 'face' is not"):
        mtkd.build_source(cfg)
