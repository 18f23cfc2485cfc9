"""The sample cache: decode and preprocess once, reuse across runs, skip or fail on bad samples,
and count everything that does not make it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import mtkd
from mtkd.data.cache import materialize


@dataclass
class FlakyOptions:
    count: int = 10
    broken: list[int] | None = None


class Flaky(mtkd.SampleSource):
    """Samples of growing brightness; the listed indices raise SampleError like a corrupt file."""

    name = "flaky"
    Options = FlakyOptions

    def __init__(self, options: FlakyOptions, image_size: int, seed: int) -> None:
        super().__init__(options, image_size, seed)
        self.label_spaces = {
            "identity": mtkd.LabelSpace(("a", "b")),
            "mask": mtkd.LabelSpace(("bg", "fg")),
        }
        self.reads = 0

    def __len__(self) -> int:
        return self.options.count

    def groups(self) -> list[int]:
        return [i % 2 for i in range(len(self))]

    def __getitem__(self, index: int) -> dict[str, Any]:
        self.reads += 1
        if index in (self.options.broken or []):
            raise mtkd.SampleError(f"photos/{index}.png", "truncated image")
        image = np.full((40, 30), index * 10, np.uint8)  # grey, not square, not the model size
        mask = np.zeros((40, 30), np.uint8)
        mask[:20] = 1
        return {"image": image, "identity": index % 2, "mask": mask}


class DropOdd(mtkd.Preprocessor):
    name = "drop_odd"

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any] | None:
        self.counts["seen"] += 1
        return None if sample["image"][0, 0] % 20 else sample


def test_samples_are_resized_to_three_channel_uint8_with_nearest_masks() -> None:
    cached, report = materialize(Flaky(FlakyOptions(), 16, 0), [], 16)
    assert cached.images.shape == (10, 16, 16, 3) and cached.images.dtype == np.uint8
    mask = cached.labels["mask"][0]
    assert mask.shape == (16, 16) and set(np.unique(mask)) == {0, 1}  # nearest: no blends
    assert mask[:8].all() and not mask[8:].any()
    assert (
        report.kept == 10 and cached.groups is not None and cached.groups.tolist()[:3] == [0, 1, 0]
    )


def test_unreadable_samples_fail_by_default_naming_the_file() -> None:
    source = Flaky(FlakyOptions(broken=[3]), 16, 0)
    with pytest.raises(mtkd.DataError, match=r"photos/3\.png: truncated image.*on_error=skip"):
        materialize(source, [], 16)


def test_skip_policy_counts_what_it_skips_and_keeps_groups_aligned() -> None:
    cached, report = materialize(Flaky(FlakyOptions(broken=[3, 4]), 16, 0), [], 16, on_error="skip")
    assert report.kept == 8 and report.skipped == {"truncated image": 2}
    assert "photos/3.png" in report.skipped_examples[0]
    assert any("skipped 2 unreadable" in line for line in report.lines())
    assert cached.groups is not None
    assert cached.groups.tolist() == [0, 1, 0, 1, 0, 1, 0, 1]  # indices 0, 1, 2, 5, 6, 7, 8, 9


def test_preprocessor_drops_are_counted() -> None:
    step = DropOdd(mtkd.NoOptions(), 16)
    cached, report = materialize(Flaky(FlakyOptions(), 16, 0), [step], 16)
    assert len(cached) == 5 and report.dropped == {"drop_odd": 5}
    assert report.preprocess_counts == {"drop_odd": {"seen": 10}}


def test_disk_cache_is_reused_without_reading_or_preprocessing_again(tmp_path: Path) -> None:
    first_source, first_step = Flaky(FlakyOptions(), 16, 0), DropOdd(mtkd.NoOptions(), 16)
    first, report = materialize(first_source, [first_step], 16, mode="disk", cache_dir=tmp_path)
    assert not report.from_cache and first_source.reads == 10
    second_source, second_step = Flaky(FlakyOptions(), 16, 0), DropOdd(mtkd.NoOptions(), 16)
    second, again = materialize(second_source, [second_step], 16, mode="disk", cache_dir=tmp_path)
    assert again.from_cache and second_source.reads == 0 and not second_step.counts
    np.testing.assert_array_equal(first.images, second.images)
    assert again.dropped == {"drop_odd": 5}  # the report travels with the cache
    other, _ = materialize(
        Flaky(FlakyOptions(count=4), 16, 0), [], 16, mode="disk", cache_dir=tmp_path
    )
    assert len(other) == 4  # other options, other cache entry


def test_unknown_policy_names_the_key() -> None:
    with pytest.raises(mtkd.RecipeError, match=r"data\.on_error: 'ignore'"):
        materialize(Flaky(FlakyOptions(), 16, 0), [], 16, on_error="ignore")


def test_unknown_preprocessor_is_named(tmp_path: Path) -> None:
    from helpers import RECIPES

    cfg = mtkd.load_recipe(
        RECIPES / "mobilenetv2_id.yaml",
        ["data.dataset.name=random_images", "data.preprocess=[{name: face_crap}]"],
    )
    with pytest.raises(
        mtkd.PluginError, match=r"data\.preprocess\[0\]\.name: unknown preprocessor"
    ):
        mtkd.build_data(cfg)
