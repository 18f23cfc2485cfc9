"""Every shipped recipe runs end to end (tiny encoder stand-ins), and the paper's encoders
have the parameter counts the paper reports."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from helpers import RECIPES, label_spaces, tiny_overrides
from omegaconf import DictConfig
from rich.console import Console

import mtkd

STAND_INS = {
    "seg_distilled_id": "mobilenetv2_035",  # same module names, so the pix2pix taps resolve
    "pose_distilled_id": "mobilenetv2_035",
    "seg_pose_distilled_id": "mobilenetv2_035",
    "orl_id": "mobilenetv2_035",
    "face_id": "mobilenetv2_100",  # the zoo entry it starts from is a mobilenetv2_100
    "pretrain_synthetic_heads": "mobilenetv2_035",
    "mobilenetv2_id": "mobilenetv2_035",
    "resnet101_id": "test_resnet",
    "vgg19_id": "test_byobnet",
    "inceptionv3_id": "test_convnext",
    "kd_resnet101": "mobilenetv2_035",  # taught by a tiny finished run (teacher_run below)
    "seg_kd_resnet101": "mobilenetv2_035",
    "face_id_dlib": "mobilenetv2_100",  # dlib's recogniser finds no face in random images
}


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A finished tiny identification run on the stand-in data, for the KD recipes."""
    root = tmp_path_factory.mktemp("teacher")
    overrides = tiny_overrides(root, **{"encoder.name": "test_efficientnet", "output.plots": False})
    cfg = mtkd.load_recipe(RECIPES / "mobilenetv2_id.yaml", overrides)
    return str(mtkd.run(cfg, console=Console(quiet=True)).run_dir)


def test_every_recipe_file_is_covered() -> None:
    from mtkd.runs.study import is_study

    shipped = {
        p.stem for p in RECIPES.glob("*.yaml") if not p.stem.startswith("_") and not is_study(p)
    }
    assert shipped == set(STAND_INS)


@pytest.mark.parametrize("recipe", sorted(STAND_INS))
def test_recipe_trains_distils_and_evaluates(
    recipe: str, tiny_recipe: Callable[..., DictConfig], request: pytest.FixtureRequest
) -> None:
    extra: dict[str, object] = {"encoder.name": STAND_INS[recipe]}
    if "kd_" in recipe:
        extra["tasks.kd.teacher.path"] = request.getfixturevalue("teacher_run")
    if recipe in ("pose_distilled_id", "seg_pose_distilled_id", "pretrain_synthetic_heads"):
        # random_images has no pose label
        extra |= {"data.dataset.name": "synthetic_heads", "data.dataset.views_spread": 0}
    cfg = tiny_recipe(recipe, **extra)
    result = mtkd.run(cfg, console=Console(quiet=True))
    test = result.results["test"]
    assert 0.0 <= test["distilled"]["identification/top1"] <= 1.0
    assert test["distilled"]["identification/top1"] == test["full"]["identification/top1"]
    teachers = {k for k, t in result.model.tasks.items() if t.role == "teacher"}
    assert set(result.results["removed_tasks"]) == teachers


@pytest.mark.parametrize(
    ("recipe", "trainable"),
    [("resnet101_id", 42_771_075), ("inceptionv3_id", 22_056_483), ("mobilenetv2_id", 2_396_483)],
)
def test_baseline_parameter_counts_match_the_design_notes(recipe: str, trainable: int) -> None:
    cfg = mtkd.load_recipe(RECIPES / f"{recipe}.yaml")
    model = mtkd.build_model(cfg, label_spaces(identities=67))
    assert model.parameter_counts().trainable == trainable
