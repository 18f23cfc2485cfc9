"""Label-range filters per split (data.split.train_where / val_where): which samples may train
and validate, by a range on a vector label; test and holdout keep every sample."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from helpers import RECIPES
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

import mtkd
from mtkd.config import SplitConfig
from mtkd.data.build import restrict_splits, split_parts
from mtkd.data.cache import CachedSamples

POSE = mtkd.LabelSpace(("yaw", "pitch", "roll"), kind="vector")


def cached_with_yaw(yaws: list[float | None], groups: list[int]) -> CachedSamples:
    """Samples with the given yaw (None: no pose label), one group each."""
    n = len(yaws)
    pose = np.zeros((n, 3), np.float32)
    pose[:, 0] = [y if y is not None else 0.0 for y in yaws]
    return CachedSamples(
        images=np.zeros((n, 4, 4, 3), np.uint8),
        labels={"identity": np.asarray(groups, np.int64), "pose": pose},
        present={"identity": np.ones(n, bool), "pose": np.array([y is not None for y in yaws])},
        groups=np.asarray(groups, np.int64),
        split=None,
        label_spaces={"identity": mtkd.LabelSpace(("a", "b", "c")), "pose": POSE},
    )


def split_cfg(**values: Any) -> DictConfig:
    merged = OmegaConf.merge(OmegaConf.structured(SplitConfig), values)
    assert isinstance(merged, DictConfig)
    return merged


def fixed(train: list[int], val: list[int], test: list[int]) -> dict[str, np.ndarray]:
    parts = {"train": train, "val": val, "test": test, "holdout": []}
    return {k: np.asarray(v, np.int64) for k, v in parts.items()}


YAWS: list[float | None] = [0, 25, 60, -80, 10, -30, 90, 5, 45, -10]
GROUPS = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_no_filter_leaves_the_split_exactly_as_it_was() -> None:
    cached = cached_with_yaw(YAWS, GROUPS)
    parts = split_parts(cached, split_cfg(test=0.2, val=0.2))
    out, filters = restrict_splits(cached, parts, split_cfg())
    assert filters == []
    for name in parts:
        assert out[name] is parts[name]  # the same arrays: same samples, same order


def test_train_filter_keeps_in_range_samples_and_validation_follows_it() -> None:
    cached = cached_with_yaw(YAWS, GROUPS)
    parts = fixed(train=[0, 1, 2, 3, 4, 6, 7, 8], val=[5, 9], test=[1, 6])
    out, filters = restrict_splits(cached, parts, split_cfg(train_where={"yaw": [-30, 30]}))
    assert out["train"].tolist() == [0, 1, 4, 7]  # yaw 0, 25, 10, 5: the ends are included
    assert out["val"].tolist() == [5, 9]  # -30 and -10: validation follows train_where
    assert out["test"] is parts["test"] and out["holdout"] is parts["holdout"]
    assert [(f.split, f.before, f.kept, f.removed) for f in filters] == [
        ("train", 8, 4, 4),
        ("val", 2, 2, 0),
    ]
    assert "4 of 8 train samples kept (4 outside the range, 0 without the label)" in (
        filters[0].line()
    )


def test_val_where_overrides_and_an_empty_one_keeps_every_validation_sample() -> None:
    cached = cached_with_yaw(YAWS, GROUPS)
    parts = fixed(train=[0, 4, 7], val=[2, 5, 6], test=[])
    own, _ = restrict_splits(
        cached, parts, split_cfg(train_where={"yaw": [-30, 30]}, val_where={"yaw": [50, 90]})
    )
    assert own["val"].tolist() == [2, 6]
    every, filters = restrict_splits(
        cached, parts, split_cfg(train_where={"yaw": [-30, 30]}, val_where={})
    )
    assert every["val"] is parts["val"] and [f.split for f in filters] == ["train"]


def test_samples_without_the_label_are_left_out_of_filtered_splits_and_counted() -> None:
    yaws = list(YAWS)
    yaws[1] = yaws[4] = None  # two training samples without pose
    cached = cached_with_yaw(yaws, GROUPS)
    parts = fixed(train=[0, 1, 4, 5, 7], val=[], test=[1, 4])
    out, filters = restrict_splits(cached, parts, split_cfg(train_where={"pose.yaw": [-30, 30]}))
    assert out["train"].tolist() == [0, 5, 7]
    assert out["test"].tolist() == [1, 4]  # unfiltered: they are still tested
    assert (filters[0].unlabelled, filters[0].removed) == (2, 2)


def test_a_filter_that_leaves_a_person_without_training_samples_names_the_key_and_count() -> None:
    cached = cached_with_yaw(YAWS, GROUPS)
    parts = fixed(train=[0, 1, 2, 3, 4, 6, 7, 8], val=[], test=[])
    with pytest.raises(
        mtkd.RecipeError,
        match=r"^data\.split\.train_where \{yaw: \[50, 90\]\}: leaves 1 of 3 groups \(people\) "
        r"with no training sample \(group 2\)",
    ):
        restrict_splits(cached, parts, split_cfg(train_where={"yaw": [50, 90]}))


def test_holdout_people_keep_every_view_and_do_not_count_as_training_people() -> None:
    yaws: list[float | None] = [float(y) for _ in range(6) for y in np.linspace(-90, 90, 10)]
    groups = [g for g in range(6) for _ in range(10)]
    cached = cached_with_yaw(yaws, groups)
    split = split_cfg(test=0.2, val=0.2, holdout=0.34, train_where={"yaw": [-45, 45]})
    parts = split_parts(cached, split)
    out, _ = restrict_splits(cached, parts, split)
    assert out["holdout"] is parts["holdout"] and len(parts["holdout"]) == 20  # 2 whole people
    trained = {groups[i] for i in out["train"]}
    assert trained == {groups[i] for i in parts["train"]} and len(trained) == 4
    assert all(abs(yaws[i]) <= 45 for i in out["train"])
    narrow = split_cfg(test=0.2, val=0.2, holdout=0.34, train_where={"yaw": [89, 90]})
    with pytest.raises(mtkd.RecipeError, match=r"leaves \d of 4 groups"):
        restrict_splits(cached, parts, narrow)


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ({"yawn": [-1, 1]}, r"train_where\.yawn: no vector label .* pose\.yaw, pose\.pitch"),
        ({"identity.yaw": [-1, 1]}, r"train_where\.identity\.yaw: no vector label"),
    ],
)
def test_an_unknown_component_is_named_with_the_known_ones(
    where: dict[str, list[float]], message: str
) -> None:
    cached = cached_with_yaw(YAWS, GROUPS)
    with pytest.raises(mtkd.RecipeError, match=message):
        restrict_splits(cached, fixed([0], [], []), split_cfg(train_where=where))


@pytest.mark.parametrize(
    "where", ["{yaw: [30, -30]}", "{yaw: [1]}", "{yaw: [1, 2, 3]}", "{yaw: [.nan, 3]}"]
)
def test_a_malformed_range_is_a_recipe_error_at_load(where: str) -> None:
    with pytest.raises(mtkd.RecipeError, match=r"data\.split\.train_where\.yaw: expected \[low"):
        mtkd.load_recipe(RECIPES / "mobilenetv2_id.yaml", [f"data.split.train_where={where}"])


def test_generated_heads_train_on_near_frontal_views_and_test_on_every_view(tmp_path: Any) -> None:
    base = ["data.cache=memory", f"output.root={tmp_path}"]
    overlays = [RECIPES / "profiles" / "tiny.yaml"]
    plain = mtkd.load_recipe(RECIPES / "mobilenetv2_id.yaml", base, overlays)
    where = "data.split.train_where={yaw: [-40, 40]}"
    filtered = mtkd.load_recipe(RECIPES / "mobilenetv2_id.yaml", [*base, where], overlays)
    before = mtkd.build_data(plain)
    console = Console(record=True, width=200)
    after = mtkd.build_data(filtered, console=console)
    yaw = after.cached.labels["pose"][:, 0]
    assert np.all(np.abs(yaw[after.train.indices]) <= 40)
    assert np.all(np.abs(yaw[after.val.indices]) <= 40)
    assert np.array_equal(after.test.indices, before.test.indices)
    assert np.any(np.abs(yaw[after.test.indices]) > 40)  # profiles are still tested
    sizes = after.sizes()
    assert sizes["train"] + sizes["train_filtered_out"] == before.sizes()["train"]
    assert "train_filtered_out" not in before.sizes()
    assert "data.split.train_where {yaw: [-40, 40]}:" in console.export_text()
