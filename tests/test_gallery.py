"""Gallery/probe identification (evaluate.gallery_where): each group enrolled from its gallery
samples, every other sample identified by the nearest template, overall and per yaw bin."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import RECIPES
from rich.console import Console

import mtkd
from mtkd.metrics.gallery import Bins, gallery_section, identify, templates

# Group 0 is enrolled from two views whose raw embeddings differ in length: the template is
# the mean of the *normalised* gallery embeddings, (1, 0). The raw mean would point at
# (0.77, 0.63), and probe 5 would then be nearest to group 0.
EMBEDDINGS = np.array(
    [
        [10.0, 10.0],  # 0: group 0, gallery
        [1.0, -1.0],  # 1: group 0, gallery
        [0.0, 2.0],  # 2: group 1, gallery
        [-3.0, 0.0],  # 3: group 2, gallery
        [0.8, -0.6],  # 4: group 0, probe -> 0
        [0.6, 0.8],  # 5: group 1, probe -> 1 (cos 0.8 against 0.6)
        [0.9, 0.3],  # 6: group 1, probe -> 0: wrong
        [-1.0, 0.2],  # 7: group 2, probe -> 2
        [0.0, 1.0],  # 8: group 3, never enrolled: not scored
    ]
)
GROUPS = np.array([0, 0, 1, 2, 0, 1, 1, 2, 3])
GALLERY = np.array([True, True, True, True, False, False, False, False, False])
YAW = np.array([0.0, 5.0, -5.0, 0.0, 20.0, 70.0, 75.0, -80.0, 0.0])


def test_templates_are_the_normalised_mean_of_normalised_gallery_embeddings() -> None:
    found, enrolled = templates(EMBEDDINGS, GROUPS, GALLERY)
    assert enrolled.tolist() == [0, 1, 2]
    np.testing.assert_allclose(found, [[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], atol=1e-12)


def test_each_probe_gets_the_group_of_its_nearest_template() -> None:
    match = identify(EMBEDDINGS, GROUPS, GALLERY)
    assert match.probes.tolist() == [4, 5, 6, 7]
    assert match.predicted.tolist() == [0, 1, 0, 2]
    assert match.correct.tolist() == [True, True, False, True]
    assert match.unenrolled_probes == 1


def test_rank1_per_yaw_bin_beside_the_classifier_on_the_same_probes() -> None:
    classifier = np.array([True, True, True, True, False, False, True, True, True])
    section = gallery_section(
        EMBEDDINGS, GROUPS, GALLERY, classifier, YAW, Bins(30.0, -90.0, 90.0), n_folds=2
    )
    assert section["rank1"] == pytest.approx(3 / 4)
    assert section["classifier_top1"] == pytest.approx(2 / 4)  # probes 4-7 only
    assert (section["gallery_samples"], section["probes"]) == (4, 4)
    assert (section["groups_enrolled"], section["groups_without_gallery"]) == (3, 1)
    assert section["probes_not_enrolled"] == 1
    rank1 = {(b["low"], b["high"]): (b["count"], b["accuracy"]) for b in section["rank1_by_bin"]}
    assert rank1[(-90.0, -60.0)] == (1, 1.0)  # probe 7
    assert rank1[(0.0, 30.0)] == (1, 1.0)  # probe 4
    assert rank1[(60.0, 90.0)] == (2, 0.5)  # probes 5 and 6
    assert rank1[(-30.0, 0.0)] == (0, None)
    by_classifier = {b["low"]: b["accuracy"] for b in section["classifier_by_bin"]}
    assert by_classifier[60.0] == 0.5 and by_classifier[0.0] == 0.0
    assert section["verification"]["n_pairs"] == 8  # a matched and a mismatched pair per probe
    assert sum(b["count"] for b in section["verification_by_bin"]) == 8


def test_well_separated_groups_verify_perfectly_in_every_bin() -> None:
    rng = np.random.default_rng(0)
    centres = np.eye(6)
    groups = np.repeat(np.arange(6), 10)
    embeddings = centres[groups] + 0.05 * rng.normal(size=(60, 6))
    gallery = np.tile(np.arange(10) < 2, 6)
    yaw = np.tile(np.linspace(-90, 90, 10), 6)
    section = gallery_section(embeddings, groups, gallery, None, yaw, Bins(60.0), n_folds=3)
    assert section["rank1"] == 1.0 and "classifier_top1" not in section
    assert section["verification"]["accuracy_mean"] == 1.0
    assert all(b["accuracy"] == 1.0 for b in section["verification_by_bin"] if b["count"])


def test_probes_without_the_binned_label_count_overall_but_in_no_bin() -> None:
    yaw = YAW.copy()
    yaw[5] = np.nan
    section = gallery_section(EMBEDDINGS, GROUPS, GALLERY, None, yaw, Bins(30.0))
    assert section["probes"] == 4
    assert sum(b["count"] for b in section["rank1_by_bin"]) == 3


def test_a_run_with_a_gallery_reports_rank1_by_yaw_in_results(tmp_path: Path) -> None:
    cfg = mtkd.load_recipe(
        RECIPES / "mobilenetv2_id.yaml",
        [
            "encoder.name=mobilenetv2_035",
            "data.cache=memory",
            "data.split.test=0.5",
            "evaluate.gallery_where={yaw: [-45, 45]}",
            "evaluate.bin_width=45",
            "evaluate.latency=false",
            "trainer.max_epochs=1",
            "trainer.progress=false",
            f"output.root={tmp_path}",
        ],
        [RECIPES / "profiles" / "tiny.yaml"],
    )
    result = mtkd.run(cfg, console=Console(quiet=True))
    gallery = result.results["gallery"]
    assert gallery["where"] == "{yaw: [-45, 45]}" and gallery["component"] == "yaw"
    section = gallery["tasks"]["identification"]
    scored = section["gallery_samples"] + section["probes"] + section["probes_not_enrolled"]
    assert scored == result.results["data"]["test"] == 30  # 6 people x 5 test views
    assert 0.0 <= section["rank1"] <= 1.0 and 0.0 <= section["classifier_top1"] <= 1.0
    assert [b["low"] for b in section["rank1_by_bin"]] == [-90.0, -45.0, 0.0, 45.0]
    assert (result.run_dir / "accuracy_by_bin-identification.png").is_file()


def test_a_gallery_on_an_unknown_component_fails_before_training(tmp_path: Path) -> None:
    cfg = mtkd.load_recipe(
        RECIPES / "mobilenetv2_id.yaml",
        ["data.cache=memory", "evaluate.gallery_where={yew: [-15, 15]}", f"output.root={tmp_path}"],
        [RECIPES / "profiles" / "tiny.yaml"],
    )
    with pytest.raises(mtkd.RecipeError, match=r"evaluate\.gallery_where\.yew: no vector label"):
        mtkd.build_data(cfg)
