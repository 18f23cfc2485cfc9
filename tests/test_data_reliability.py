"""Real data's rough edges (issue 16): symlink loops, a last batch of one, a killed or damaged
sample cache, stray palette pixels, masks a few pixels off, train/test-only and session
splits, non-square photos. Each default keeps what ran before bit for bit; each fix triggers
only on input that failed (or silently went wrong) before."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from filelock import FileLock
from helpers import (
    PALETTE,
    ListDataset,
    banded_mask,
    build_folder_data,
    folder_plugins,
    folder_recipe,
    noise,
    people_tree,
    save_image,
)
from PIL import Image

import mtkd
from mtkd.data.build import EpochSampler, make_train_loader
from mtkd.data.cache import materialize
from mtkd.data.resize import make_square, resize_image
from mtkd.engine.fit import fit
from mtkd.model.probe import smallest_train_batch


def source(name: str, root: Path, **options: Any) -> Any:
    cfg = mtkd.recipe_from_dict({"data": {"dataset": {"name": name, "root": str(root), **options}}})
    return mtkd.build_source(cfg, folder_plugins())


# --- 2. symlink loops --------------------------------------------------------------------


def test_a_symlink_loop_is_cut_and_counted_so_each_photo_is_one_correctly_labelled_sample(
    tmp_path: Path,
) -> None:
    root = people_tree(tmp_path / "data")
    (root / "images" / "alice" / "loop").symlink_to("..")  # once: 15 images became 615
    data = build_folder_data("identity_folder", root, dataset={"images": "images"})
    assert data.report.total == 15 and data.report.kept == 15
    assert data.report.source_counts["ignored_symlink_loops"] == 1
    names = data.label_spaces["identity"].names
    assert names == ("alice", "bob", "carol")
    assert data.cached.groups is not None  # a folder of people has groups
    assert np.bincount(data.cached.groups).tolist() == [5, 5, 5]
    seen = [*data.train.indices, *data.val.indices, *data.test.indices]
    assert sorted(seen) == list(range(15))  # no sample in two splits
    assert any("ignored_symlink_loops: 1" in line for line in data.report.lines())


def test_two_links_to_one_photo_make_one_sample_and_linked_person_folders_still_count(
    tmp_path: Path,
) -> None:
    root = people_tree(tmp_path / "data", people=("alice", "bob"))
    elsewhere = people_tree(tmp_path / "other", people=("dave",))
    (root / "images" / "dave").symlink_to(elsewhere / "images" / "dave")  # a linked person
    (root / "images" / "bob" / "copy.png").symlink_to(root / "images" / "alice" / "0.png")
    (root / "images" / "alice_again").symlink_to(root / "images" / "alice")
    found = source("identity_folder", root, images="images")
    assert len(found) == 15  # alice, bob and the linked dave, 5 each; nothing twice
    assert found.label_spaces["identity"].names == ("alice", "bob", "dave")
    counts = found.report()
    assert counts["ignored_duplicate_files"] == 1 and counts["ignored_repeated_folders"] == 1
    assert "ignored_symlink_loops" not in counts


def test_a_loop_in_the_mask_folder_is_cut_too(tmp_path: Path) -> None:
    root = people_tree(tmp_path / "data")
    (root / "masks" / "bob" / "up").symlink_to("../..")
    found = source("palette_folder", root, palette=PALETTE)
    assert len(found) == 15 and found.report()["samples_with_mask"] == 15
    assert found.report()["ignored_symlink_loops"] == 1


# --- 7. a last training batch of one -------------------------------------------------------


def test_a_last_batch_of_one_is_left_out_when_the_model_needs_two_and_resume_stays_exact() -> None:
    sampler = EpochSampler(42, seed=3, global_batch=41, min_batch=2)
    assert sampler.length() == 41
    left_out = set()
    for epoch in range(4):
        sampler.set_epoch(epoch)
        order = list(sampler)
        full = torch.randperm(42, generator=torch.Generator().manual_seed(3 * 1_000_003 + epoch))
        assert order == full.tolist()[:41]  # the same shuffle, its last sample waits
        left_out |= set(range(42)) - set(order)
        sampler.set_epoch(epoch, start=20)  # a resumed epoch continues the same order
        assert list(sampler) == order[20:]
    assert len(left_out) > 1  # a different sample each epoch, none lost for good
    plain = EpochSampler(42, seed=3, global_batch=41)  # a model that trains on one: as before
    assert plain.length() == 42 and len(list(plain)) == 42
    roomy = EpochSampler(45, seed=3, global_batch=41, min_batch=2)  # a last batch of 4: kept
    assert roomy.length() == 45


def test_the_loader_yields_as_many_batches_as_the_epoch_is_counted_in_and_none_of_one() -> None:
    dataset = [{"image": torch.full((3, 2, 2), float(i))} for i in range(42)]
    loader = make_train_loader(ListDataset(dataset), 41, seed=0, min_batch=2)
    sampler = loader.sampler
    assert isinstance(sampler, EpochSampler)
    steps = -(-sampler.length() // 41)  # how the training loop counts an epoch's steps
    batches = [len(batch["image"]) for batch in loader]
    assert len(batches) == steps == 1 and batches == [41]
    with pytest.raises(mtkd.RecipeError, match=r"data\.batch_size: 1 .*at least 2"):
        make_train_loader(ListDataset(dataset), 1, min_batch=2)
    with pytest.raises(mtkd.DataError, match="1 training sample"):
        make_train_loader(ListDataset([0]), 8, min_batch=2)


def test_the_probe_tells_a_model_whose_batchnorm_cannot_train_on_one_image() -> None:
    spaces = {"identity": mtkd.LabelSpace(("a", "b", "c"))}
    answers = {}
    for size in (32, 64):
        cfg = mtkd.recipe_from_dict(
            {
                "encoder": {"name": "mobilenetv2_035"},
                "tasks": {"identification": {}},
                "data": {"image_size": size},
            }
        )
        model = mtkd.build_model(cfg, spaces)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        rng = torch.get_rng_state()
        answers[size] = smallest_train_batch(model, size)
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
        assert torch.equal(rng, torch.get_rng_state()) and model.training
    assert answers == {32: 2, 64: 1}  # a 1x1 last stage at 32 px; 2x2 at 64 px is fine


def test_42_samples_in_batches_of_41_train_at_32_px(tmp_path: Path) -> None:
    cfg = mtkd.recipe_from_dict(
        {
            "encoder": {"name": "mobilenetv2_035"},
            "tasks": {"identification": {}},
            "data": {
                "dataset": {"name": "random_images", "identities": 6, "views": 7},
                "image_size": 32,
                "batch_size": 41,
                "cache": "memory",
                "split": {"test": 0.0, "val": 0.0},
            },
            "trainer": {"max_epochs": 2, "progress": False},
        }
    )
    data = mtkd.build_data(cfg)
    assert len(data.train) == 42
    model = mtkd.build_model(cfg, data.label_spaces)
    loader = make_train_loader(data.train, 41, min_batch=smallest_train_batch(model, 32))
    context = fit(model, loader, None, cfg)  # raised BatchNorm's ValueError on the last step
    assert [r["epoch"] for r in context.history] == [1, 2]
    assert all(np.isfinite(r["train/loss"]) for r in context.history)


# --- 10. the sample cache --------------------------------------------------------------------


@dataclass
class CountingOptions:
    count: int = 6
    delay: float = 0.0


class Counting(mtkd.SampleSource):
    """Grey samples of growing brightness; counts reads, optionally slowly (to be killed)."""

    name = "counting"
    Options = CountingOptions

    def __init__(self, options: CountingOptions, image_size: int, seed: int) -> None:
        super().__init__(options, image_size, seed)
        self.label_spaces = {"identity": mtkd.LabelSpace(("a", "b"))}
        self.reads = 0

    def __len__(self) -> int:
        return self.options.count

    def groups(self) -> list[int]:
        return [i % 2 for i in range(len(self))]

    def __getitem__(self, index: int) -> dict[str, Any]:
        self.reads += 1
        time.sleep(self.options.delay)
        return {"image": np.full((20, 10), index * 20, np.uint8), "identity": index % 2}


KILLED_BUILD = """
import sys, time
sys.path.insert(0, {tests!r})
from pathlib import Path
from test_data_reliability import Counting, CountingOptions
from mtkd.data.cache import materialize
materialize(Counting(CountingOptions(count=50, delay=0.2), 8, 0), [], 8, mode="disk",
            cache_dir=Path({cache!r}))
"""


@pytest.mark.slow  # a subprocess that imports torch and mtkd, killed mid-build
def test_a_cache_build_killed_midway_leaves_a_partial_folder_the_next_build_removes(
    tmp_path: Path,
) -> None:
    cache = tmp_path / "cache"
    script = KILLED_BUILD.format(tests=str(Path(__file__).parent), cache=str(cache))
    writer = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 60
        while not list(cache.glob(".*.partial")) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert list(cache.glob(".*.partial")), "the build never started"
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    assert list(cache.glob(".*.partial"))  # what a kill leaves: hidden, and once forever
    heard: list[str] = []
    cached, _ = materialize(
        Counting(CountingOptions(), 8, 0), [], 8, mode="disk", cache_dir=cache, notify=heard.append
    )
    assert len(cached) == 6
    assert not list(cache.glob(".*.partial")) and not list(cache.glob(".*.lock"))
    assert any("killed" in line for line in heard)


def test_a_partial_folder_a_live_process_is_writing_is_left_alone(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    live = cache / ".counting-8px-0123.999999.partial"
    live.mkdir(parents=True)
    lock = FileLock(str(live) + ".lock")
    old, young = cache / ".counting-8px-old.1.partial", cache / ".counting-8px-new.2.partial"
    old.mkdir()
    young.mkdir()
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(old, (two_days_ago, two_days_ago))  # an unlocked one from before locks existed
    with lock:
        materialize(Counting(CountingOptions(), 8, 0), [], 8, mode="disk", cache_dir=cache)
        assert live.is_dir()
    assert young.is_dir() and not old.exists()


DAMAGE = {
    "truncated images.npy": lambda f: (f / "images.npy").write_bytes(
        (f / "images.npy").read_bytes()[:200]
    ),
    "broken meta.json": lambda f: (f / "meta.json").write_text('{"version": 2, "n": '),
    "empty meta.json": lambda f: (f / "meta.json").write_text(""),
    "meta.json of other samples": lambda f: (f / "meta.json").write_text(
        (f / "meta.json").read_text().replace('"n": 6', '"n": 60')
    ),
    "a label file gone": lambda f: (f / "label-identity.npy").unlink(),
    "meta.json gone": lambda f: (f / "meta.json").unlink(),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_cache_is_rebuilt_with_a_message_not_a_traceback(
    damage: str, tmp_path: Path
) -> None:
    first_source = Counting(CountingOptions(), 8, 0)
    first, _ = materialize(first_source, [], 8, mode="disk", cache_dir=tmp_path)
    want = np.array(first.images)
    (folder,) = [p for p in tmp_path.iterdir() if not p.name.startswith(".")]
    del first
    DAMAGE[damage](folder)
    again = Counting(CountingOptions(), 8, 0)
    heard: list[str] = []
    cached, report = materialize(again, [], 8, mode="disk", cache_dir=tmp_path, notify=heard.append)
    assert again.reads == 6 and not report.from_cache  # rebuilt from the source
    np.testing.assert_array_equal(cached.images, want)
    assert len(heard) == 1 and "rebuilding" in heard[0] and str(folder) in heard[0]
    third = Counting(CountingOptions(), 8, 0)
    materialize(third, [], 8, mode="disk", cache_dir=tmp_path)
    assert third.reads == 0  # the rebuilt cache is whole


# --- 12. stray palette pixels ---------------------------------------------------------------


def test_a_few_stray_pixels_are_snapped_and_counted_but_a_wrong_palette_still_fails(
    tmp_path: Path,
) -> None:
    root = people_tree(tmp_path / "data", people=("ann",), views=2, height=40)
    mask = banded_mask(40)
    mask[5, 7] = (0, 0, 255)  # 1 of 1,600 pixels, 255 from every colour and blend
    save_image(root / "masks" / "ann" / "1.png", mask)
    found = source("palette_folder", root, palette=PALETTE)
    assert found[1]["mask"][5, 7] == 1  # snapped to the nearest colour (skin, 221 away)
    found[1]
    counts = found.report()
    assert counts["masks_with_stray_pixels"] == 1 and counts["stray_pixels"] == 1
    with pytest.raises(mtkd.SampleError, match=r"stray_fraction=0 allows"):
        strict = source("palette_folder", root, palette=PALETTE, stray_fraction=0, bad_masks="fail")
        strict[1]  # as before, when asked to be strict
    swapped = {"background": [0, 0, 0], "skin": [128, 128, 128], "hair": [0, 255, 255]}
    with pytest.raises(mtkd.SampleError, match=r"palette match the files.*\(255, 255, 0\)"):
        source("palette_folder", root, palette=swapped, bad_masks="fail")[0]  # a third is far
    with pytest.raises(mtkd.RecipeError, match=r"data\.dataset\.stray_fraction"):
        source("palette_folder", root, palette=PALETTE, stray_fraction=1.5)


def test_the_share_of_stray_pixels_per_mask_is_reported_once_and_a_bad_mask_is_dropped(
    tmp_path: Path,
) -> None:
    """Issue 27, item 3: whether the palette fits shows at a glance in the data report."""
    root = people_tree(tmp_path / "data", people=("ann", "ben"), views=3, height=40)
    one = banded_mask(40)
    one[5, 7] = (0, 0, 255)  # 1 of 1,600 pixels: 0.06 %, tolerated
    save_image(root / "masks" / "ann" / "1.png", one)
    many = banded_mask(40)
    many[:2, :5] = (0, 0, 255)  # 10 pixels: 0.6 %, beyond stray_fraction
    save_image(root / "masks" / "ben" / "2.png", many)
    data = build_folder_data(
        "palette_folder", root, dataset={"palette": PALETTE}, split={"test": 0.0, "val": 0.0}
    )
    counts = data.report.source_counts
    assert counts["masks_by_stray_share"] == {
        "none": 4,
        "<=0.010%": 0,
        "<=0.10%": 1,
        ">0.10%": 1,
    }
    assert counts["masks_dropped"] == {"far_colours": 1}
    assert data.report.kept == 6 and int(data.cached.present["mask"].sum()) == 5
    shown = [line for line in data.report.lines() if "masks_by_stray_share" in line]
    assert shown == ["  masks_by_stray_share: none 4, <=0.010% 0, <=0.10% 1, >0.10% 1"]


# --- 13. masks a few pixels off ---------------------------------------------------------------


def test_a_mask_a_few_pixels_off_is_resized_by_default_and_far_off_fails_when_strict(
    tmp_path: Path,
) -> None:
    root = people_tree(tmp_path / "data", people=("ann",), views=3, height=40)
    save_image(root / "masks" / "ann" / "1.png", banded_mask(40, 39))  # 2.5 % narrower
    save_image(root / "masks" / "ann" / "2.png", banded_mask(40, 30))  # 25 %: a wrong pairing
    found = source("palette_folder", root, palette=PALETTE, bad_masks="fail")
    resized = found[1]["mask"]
    assert resized.shape == (40, 40) and set(np.unique(resized)) == {0, 1, 2}
    with pytest.raises(
        mtkd.SampleError, match=r"not the size of its image \(30x40 pixels.*25\.0% off.*bad_masks"
    ):
        found[2]
    assert found.report()["masks_resized"] == 1
    strict = source("palette_folder", root, palette=PALETTE, mask_size="fail", bad_masks="fail")
    with pytest.raises(
        mtkd.SampleError,
        match=r"39x40 pixels, its image .* 40x40: 2\.5% off, data\.dataset\.mask_size=fail",
    ):
        strict[1]


def test_drop_mask_keeps_the_image_for_identification_and_counts_it(tmp_path: Path) -> None:
    root = people_tree(tmp_path / "data", people=("ann", "ben"), views=3, height=40)
    save_image(root / "masks" / "ann" / "2.png", banded_mask(40, 30))
    data = build_folder_data(
        "palette_folder",
        root,
        dataset={"palette": PALETTE, "mask_size": "drop_mask"},
        split={"test": 0.0, "val": 0.0},
    )
    assert data.report.kept == 6  # no sample lost
    assert data.report.source_counts["masks_dropped"] == {"wrong_size": 1}
    assert int(data.cached.present["mask"].sum()) == 5
    assert int(data.cached.present["identity"].sum()) == 6
    with pytest.raises(mtkd.RecipeError, match=r"data\.dataset\.mask_size: 'shrink'"):
        source("palette_folder", root, palette=PALETTE, mask_size="shrink")


def test_index_masks_a_few_pixels_off_are_resized_too(tmp_path: Path) -> None:
    root = tmp_path / "data"
    save_image(root / "images" / "ann" / "0.png", noise(0, 50))
    ids = np.zeros((49, 50), np.uint8)
    ids[25:] = 1
    save_image(root / "masks" / "ann" / "0.png", ids)
    found = source("index_folder", root, classes=["background", "skin"])
    mask = found[0]["mask"]
    assert mask.shape == (50, 50) and mask[0, 0] == 0 and mask[-1, 0] == 1
    assert found.report()["masks_resized"] == 1


# --- 14. train/test-only splits and session numbers ---------------------------------------------


def split_tree(root: Path, folders: dict[str, int]) -> Path:
    """images/<split folder>/<person>/<view>.png for three people."""
    for folder, views in folders.items():
        for p, person in enumerate(("ann", "ben", "cat")):
            for v in range(views):
                save_image(root / "images" / folder / person / f"{v}.png", noise(100 * p + v))
    return root


def test_validation_is_carved_out_of_train_per_identity_when_the_split_has_none(
    tmp_path: Path,
) -> None:
    root = split_tree(tmp_path / "data", {"train": 6, "test": 2})
    dataset = {"images": "images", "pattern": "^(?P<split>[^/]+)/", "identity_level": 1}
    before = build_folder_data("identity_folder", root, dataset=dataset)
    assert len(before.val) == 0 and len(before.train) == 18  # the default: as it always was
    carved = build_folder_data(
        "identity_folder", root, dataset=dataset, split={"val": 0.2, "val_from_train": True}
    )
    groups = carved.cached.groups
    assert groups is not None
    assert np.bincount(groups[carved.val.indices]).tolist() == [1, 1, 1]  # per person
    assert np.bincount(groups[carved.train.indices]).tolist() == [5, 5, 5]
    assert carved.test.indices.tolist() == before.test.indices.tolist()
    again = build_folder_data(
        "identity_folder", root, dataset=dataset, split={"val": 0.2, "val_from_train": True}
    )
    assert again.val.indices.tolist() == carved.val.indices.tolist()  # deterministic


def test_split_values_that_are_not_split_words_are_mapped_in_the_recipe(tmp_path: Path) -> None:
    root = split_tree(tmp_path / "data", {"session1": 2, "session2": 2, "session3": 1})
    dataset = {"images": "images", "pattern": r"^session(?P<split>\d)/", "identity_level": 1}
    with pytest.raises(mtkd.DataError, match=r"split '1' is not one of.*split_names"):
        source("identity_folder", root, **dataset)
    names = {1: "train", 2: "validation", 3: "test"}  # numbers as YAML gives them
    data = build_folder_data("identity_folder", root, dataset={**dataset, "split_names": names})
    assert (len(data.train), len(data.val), len(data.test)) == (6, 6, 3)
    with pytest.raises(mtkd.RecipeError, match=r"split_names\.3: 'later'"):
        source("identity_folder", root, **dataset, split_names={3: "later"})


# --- 15. non-square photos ------------------------------------------------------------------


def test_non_square_photos_are_squashed_by_default_exactly_as_before() -> None:
    portrait = noise(5, 45, 30)
    old_way = np.asarray(Image.fromarray(portrait).resize((16, 16), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(resize_image(portrait, 16), old_way)
    assert make_square(portrait, "squash") is portrait


def test_crop_and_pad_keep_the_proportions_and_move_labels_with_the_pixels() -> None:
    rows = np.arange(6, dtype=np.uint8)[:, None].repeat(4, axis=1)  # 6 tall, 4 wide: row ids
    assert make_square(rows, "center_crop")[:, 0].tolist() == [1, 2, 3, 4]
    assert make_square(rows, "top_crop")[:, 0].tolist() == [0, 1, 2, 3]  # keeps the head
    padded = make_square(rows, "pad")
    assert padded.shape == (6, 6) and padded[:, 0].tolist() == [0] * 6
    assert padded[:, 1].tolist() == list(range(6))
    wide = rows.T  # 4 tall, 6 wide: top_crop crops the middle of a landscape photo
    assert make_square(wide, "top_crop")[0].tolist() == [1, 2, 3, 4]


def test_a_recipe_crops_images_and_masks_alike_and_caches_them_apart(tmp_path: Path) -> None:
    root = tmp_path / "data"
    image = np.zeros((48, 32, 3), np.uint8)
    image[:16] = 255  # the top third white
    mask = np.zeros((48, 32, 3), np.uint8)
    mask[:16] = (128, 128, 128)  # and labelled skin
    for person in ("ann", "ben"):
        save_image(root / "images" / person / "0.png", image)
        save_image(root / "masks" / person / "0.png", mask)
    cache = tmp_path / "cache"
    kept: dict[str, Any] = {}
    for mode in ("squash", "top_crop", "pad"):
        data = build_folder_data(
            "palette_folder",
            root,
            dataset={"palette": PALETTE},
            resize=mode,
            cache="disk",
            cache_dir=str(cache),
        )
        kept[mode] = (np.array(data.cached.images[0]), np.array(data.cached.labels["mask"][0]))
        white = kept[mode][0][:, :, 0] > 127
        assert np.array_equal(white, kept[mode][1] == 1), mode  # labels follow the pixels
    assert 5 <= int((kept["squash"][1][:, 8] == 1).sum()) <= 6  # a third of 16 rows
    assert int((kept["top_crop"][1] == 1).sum()) == 16 * 16 // 2  # the top half of the square
    assert int((kept["pad"][1][:, 0] == 1).sum()) == 0  # black borders are background
    assert len([p for p in cache.iterdir() if not p.name.startswith(".")]) == 3
    with pytest.raises(mtkd.RecipeError, match=r"data\.resize: 'crop' is not one of"):
        folder_recipe("palette_folder", root, resize="crop")
