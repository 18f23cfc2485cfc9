"""Recipes: inheritance, overlays, overrides, and errors that name the key or file at fault."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import RECIPES, label_spaces

import mtkd


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_recipe_inherits_base_and_keeps_its_own_values() -> None:
    cfg = mtkd.load_recipe(RECIPES / "seg_distilled_id.yaml")
    assert cfg.name == "seg_distilled_id"
    assert cfg.trainer.max_epochs == 125 and cfg.trainer.patience == 20  # from _base
    assert cfg.tasks.identification.weight == 0.1  # overridden by the recipe
    assert cfg.tasks.identification.embedding_dim == 128  # merged from _base
    assert cfg.tasks.segmentation.role == "teacher"


def test_baselines_share_the_base_and_differ_only_in_encoder() -> None:
    names = {
        "mobilenetv2_id": "mobilenetv2_100",
        "resnet101_id": "resnet101",
        "vgg19_id": "vgg19",
        "inceptionv3_id": "inception_v3",
    }
    for recipe, encoder in names.items():
        cfg = mtkd.load_recipe(RECIPES / f"{recipe}.yaml")
        assert cfg.encoder.name == encoder
        assert list(cfg.tasks) == ["identification"]
        assert len((RECIPES / f"{recipe}.yaml").read_text().splitlines()) <= 6


def test_dotlist_overrides_and_yaml_overlays_apply_in_order(tmp_path: Path) -> None:
    overlay = write(tmp_path / "profile.yaml", "trainer: {max_epochs: 4}\ndata: {image_size: 64}\n")
    cfg = mtkd.load_recipe(
        RECIPES / "seg_distilled_id.yaml", ["trainer.max_epochs=3"], overlays=[overlay]
    )
    assert cfg.trainer.max_epochs == 3  # overrides come after overlays
    assert cfg.data.image_size == 64


def test_unknown_key_is_named_with_a_suggestion() -> None:
    with pytest.raises(mtkd.RecipeError, match=r"trainer\.max_epoch.*did you mean 'max_epochs'"):
        mtkd.load_recipe(RECIPES / "mobilenetv2_id.yaml", ["trainer.max_epoch=3"])


def test_unknown_key_in_a_file_names_the_file(tmp_path: Path) -> None:
    recipe = write(tmp_path / "bad.yaml", "trainer:\n  patiense: 3\n")
    with pytest.raises(mtkd.RecipeError, match=r"bad\.yaml.*trainer\.patiense.*'patience'"):
        mtkd.load_recipe(recipe)


def test_wrong_type_is_named() -> None:
    with pytest.raises(mtkd.RecipeError, match=r"wrong type for 'trainer\.max_epochs'"):
        mtkd.load_recipe(RECIPES / "mobilenetv2_id.yaml", ["trainer.max_epochs=many"])


def test_missing_recipe_and_missing_base_are_named(tmp_path: Path) -> None:
    with pytest.raises(mtkd.RecipeError, match=r"nope\.yaml' not found"):
        mtkd.load_recipe(tmp_path / "nope.yaml")
    recipe = write(tmp_path / "child.yaml", "defaults: [missing_base]\n")
    with pytest.raises(
        mtkd.RecipeError, match=r"child\.yaml.*base recipe 'missing_base' not found"
    ):
        mtkd.load_recipe(recipe)


def test_defaults_cycle_is_reported(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "defaults: [b]\n")
    write(tmp_path / "b.yaml", "defaults: [a]\n")
    with pytest.raises(mtkd.RecipeError, match="cycle"):
        mtkd.load_recipe(tmp_path / "a.yaml")


def test_malformed_override_is_explained() -> None:
    with pytest.raises(mtkd.RecipeError, match="key=value"):
        mtkd.load_recipe(RECIPES / "mobilenetv2_id.yaml", ["trainer.max_epochs"])


def test_an_override_whose_value_is_not_yaml_is_named_not_a_traceback() -> None:
    with pytest.raises(mtkd.RecipeError, match=r"override 'output.loggers=\[a, b\}'.*quote it"):
        mtkd.load_recipe(RECIPES / "mobilenetv2_id.yaml", ["output.loggers=[a, b}"])


def test_missing_plugin_file_is_named() -> None:
    with pytest.raises(mtkd.RecipeError, match=r"plugins\[0\].*my_plugin\.py' not found"):
        mtkd.load_recipe(RECIPES / "mobilenetv2_id.yaml", ["plugins=[my_plugin.py]"])


def test_unknown_task_name_suggests_the_closest() -> None:
    cfg = mtkd.load_recipe(RECIPES / "mobilenetv2_id.yaml", ["tasks.segmentaton.role=teacher"])
    with pytest.raises(mtkd.PluginError, match=r"tasks\.segmentaton.*did you mean 'segmentation'"):
        mtkd.build_tasks(cfg, label_spaces())


def test_unknown_task_option_is_named() -> None:
    cfg = mtkd.load_recipe(
        RECIPES / "mobilenetv2_id.yaml", ["tasks.identification.embeding_dim=64"]
    )
    with pytest.raises(
        mtkd.RecipeError, match=r"tasks\.identification\.embeding_dim.*'embedding_dim'"
    ):
        mtkd.build_tasks(cfg, label_spaces())


def test_wrong_role_is_named() -> None:
    cfg = mtkd.load_recipe(RECIPES / "mobilenetv2_id.yaml", ["tasks.identification.role=mentor"])
    with pytest.raises(mtkd.RecipeError, match=r"tasks\.identification\.role: 'mentor'"):
        mtkd.build_tasks(cfg, label_spaces())


def test_unknown_encoder_suggests_timm_names() -> None:
    cfg = mtkd.load_recipe(RECIPES / "mobilenetv2_id.yaml", ["encoder.name=mobilenetv2_10"])
    with pytest.raises(mtkd.RecipeError, match=r"encoder\.name.*did you mean.*mobilenetv2_100"):
        mtkd.build_model(cfg, label_spaces())


def test_unknown_dataset_suggests_the_closest() -> None:
    cfg = mtkd.load_recipe(RECIPES / "mobilenetv2_id.yaml", ["data.dataset.name=random_image"])
    with pytest.raises(mtkd.PluginError, match=r"data\.dataset\.name.*'random_images'"):
        mtkd.build_data(cfg)


def test_unknown_dataset_option_is_named() -> None:
    cfg = mtkd.load_recipe(RECIPES / "mobilenetv2_id.yaml", ["data.dataset.identites=3"])
    with pytest.raises(mtkd.RecipeError, match=r"data\.dataset\.identites.*'identities'"):
        mtkd.build_data(cfg)


def test_missing_local_weights_file_is_named() -> None:
    cfg = mtkd.load_recipe(
        RECIPES / "mobilenetv2_id.yaml", ["encoder.weights=/no/such.safetensors"]
    )
    with pytest.raises(mtkd.RecipeError, match=r"encoder\.weights.*/no/such\.safetensors"):
        mtkd.build_model(cfg, label_spaces())


def test_task_needing_a_label_the_data_lacks_is_explained() -> None:
    cfg = mtkd.load_recipe(RECIPES / "seg_distilled_id.yaml")
    spaces = {"identity": label_spaces()["identity"]}
    with pytest.raises(mtkd.RecipeError, match=r"tasks\.segmentation.*label 'mask'"):
        mtkd.build_tasks(cfg, spaces)
