"""The sample cache built by several processes (data.cache_workers): the same bytes as one
process, the same one-line errors, and a killed build that the next build cleans up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import PALETTE, folder_plugins, people_tree, save_image

import mtkd
from mtkd.data.cache import materialize
from mtkd.data.cache_parallel import MIN_AUTO_SHARD, cache_workers


@dataclass
class MixedOptions:
    count: int = 23
    broken: list[int] = field(default_factory=list)
    die_at: int = -1  # a worker process exits here (the parent reads it fine)


class Mixed(mtkd.SampleSource):
    """Grey images of varying sizes with a mask, a class id and a float vector; some indices
    raise SampleError, some lack the vector, and the source counts what it read."""

    name = "mixed"
    Options = MixedOptions

    def __init__(self, options: MixedOptions, image_size: int, seed: int) -> None:
        super().__init__(options, image_size, seed)
        self.label_spaces = {"identity": mtkd.LabelSpace(("a", "b", "c"))}
        self.parent = os.getpid()
        self.seen: dict[int, str] = {}

    def __len__(self) -> int:
        return self.options.count

    def groups(self) -> list[int]:
        return [i % 3 for i in range(len(self))]

    def sample_names(self) -> list[str]:
        return [f"s{i:03d}" for i in range(len(self))]

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index == self.options.die_at and os.getpid() != self.parent:
            os._exit(3)
        if index in self.options.broken:
            raise mtkd.SampleError(f"photos/{index}.png", "truncated image")
        self.seen[index] = "tall" if index % 4 else "wide"
        shape = (30 + index, 20) if index % 4 else (20, 33)
        rng = np.random.default_rng(index)
        sample: dict[str, Any] = {
            "image": rng.integers(0, 255, (*shape, 3), dtype=np.uint8),
            "mask": (rng.random(shape) * 3).astype(np.uint8),
            "identity": index % 3,
        }
        if index >= 5:  # the first samples lack it: its dtype comes from a later sample
            sample["pose"] = rng.normal(size=3).astype(np.float32)
        return sample

    def report(self) -> dict[str, Any]:
        kinds: dict[str, int] = {}
        for kind in self.seen.values():
            kinds[kind] = kinds.get(kind, 0) + 1
        return {"samples": len(self), "read": len(self.seen), "shapes": kinds}


class DropEveryFifth(mtkd.Preprocessor):
    name = "drop_every_fifth"

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any] | None:
        self.counts["seen"] += 1
        if int(sample["image"].shape[0]) % 5 == 0:
            self.counts["dropped"] += 1
            return None
        return sample


def _disk_build(root: Path, workers: int, **options: Any) -> tuple[Any, Any]:
    source = Mixed(MixedOptions(**options), 16, 0)
    steps = [DropEveryFifth(mtkd.NoOptions(), 16)]
    return materialize(
        source, steps, 16, on_error="skip", mode="disk", cache_dir=root, workers=workers
    )


def _files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by relative path (the cache folder's name is its key)."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _assert_same_cache(one: Path, two: Path) -> None:
    first, second = _files(one), _files(two)
    assert sorted(first) == sorted(second)
    assert any(name.endswith("meta.json") for name in first)
    for name, blob in first.items():
        assert blob == second[name], name


def test_two_workers_write_the_one_process_cache_byte_for_byte(tmp_path: Path) -> None:
    _, serial = _disk_build(tmp_path / "one", 1, broken=[2, 11])
    _, parallel = _disk_build(tmp_path / "two", 2, broken=[2, 11])
    assert serial.skipped == {"truncated image": 2} and serial.dropped["drop_every_fifth"] == 9
    assert parallel.lines() == serial.lines()
    _assert_same_cache(tmp_path / "one", tmp_path / "two")


def test_parallel_memory_build_equals_the_serial_one() -> None:
    def build(workers: int) -> tuple[Any, Any, DropEveryFifth]:
        step = DropEveryFifth(mtkd.NoOptions(), 16)
        source = Mixed(MixedOptions(broken=[0, 7]), 16, 0)
        cached, report = materialize(source, [step], 16, on_error="skip", workers=workers)
        return cached, report, step

    one, report_one, step_one = build(1)
    two, report_two, step_two = build(3)
    np.testing.assert_array_equal(one.images, two.images)
    assert list(one.labels) == list(two.labels)  # the same keys, in the same order
    for key in one.labels:
        assert one.labels[key].dtype == two.labels[key].dtype
        np.testing.assert_array_equal(one.labels[key], two.labels[key])
        np.testing.assert_array_equal(one.present[key], two.present[key])
    assert one.rows is not None and two.rows is not None
    assert one.rows.tolist() == two.rows.tolist() and one.names == two.names
    assert report_one == report_two and step_one.counts == step_two.counts
    assert report_two.source_counts["shapes"] == {"tall": 16, "wide": 5}  # summed over workers


@pytest.mark.parametrize(
    "dataset",
    [
        {"name": "synthetic_heads", "identities": 3, "views": 4, "views_spread": 0},
        {"name": "random_images", "identities": 3, "views": 5},
    ],
)
def test_recipe_data_sets_cache_the_same_with_one_or_two_workers(
    tmp_path: Path, dataset: dict[str, Any]
) -> None:
    for workers in (1, 2):
        cfg = mtkd.recipe_from_dict(
            {
                "data": {
                    "dataset": dataset,
                    "image_size": 24,
                    "cache": "disk",
                    "cache_dir": str(tmp_path / str(workers)),
                    "cache_workers": workers,
                }
            }
        )
        mtkd.build_data(cfg)
    _assert_same_cache(tmp_path / "1", tmp_path / "2")


def test_folder_data_set_caches_the_same_with_one_or_two_workers(tmp_path: Path) -> None:
    root = people_tree(tmp_path / "people", views=4)
    save_image(root / "images" / "dave" / "0.png", np.zeros((12, 30, 3), np.uint8))  # no mask
    (root / "images" / "dave" / "1.png").write_bytes(b"not a png")
    for workers in (1, 2):
        cfg = mtkd.recipe_from_dict(
            {
                "data": {
                    "dataset": {"name": "palette_folder", "root": str(root), "palette": PALETTE},
                    "image_size": 16,
                    "cache": "disk",
                    "cache_dir": str(tmp_path / str(workers)),
                    "cache_workers": workers,
                    "on_error": "skip",
                }
            }
        )
        bundle = mtkd.build_data(cfg, folder_plugins())
        assert bundle.report.skipped  # the broken file is skipped by either build
    _assert_same_cache(tmp_path / "1", tmp_path / "2")


def test_an_unreadable_sample_in_a_worker_fails_with_the_serial_one_line_error() -> None:
    errors = []
    for workers in (1, 2):
        with pytest.raises(mtkd.DataError) as caught:
            materialize(Mixed(MixedOptions(broken=[9, 17]), 16, 0), [], 16, workers=workers)
        errors.append(str(caught.value))
    assert errors[0] == errors[1]
    assert "photos/9.png: truncated image" in errors[1] and "\n" not in errors[1]


def test_a_worker_that_dies_fails_the_build_cleanly_and_the_next_build_completes(
    tmp_path: Path,
) -> None:
    with pytest.raises(mtkd.DataError, match=r"cache-build worker process died.*cache_workers"):
        _disk_build(tmp_path, 2, die_at=13)
    assert not list(tmp_path.glob(".*partial*"))  # the parent removed its partial folder
    cached, report = _disk_build(tmp_path, 2)
    assert not report.from_cache and len(cached) == report.kept


class KillsAWorker(Mixed):
    """``Mixed`` (the same name and options, so the same cache key) whose worker process is
    killed (SIGKILL, as by the OOM killer or a user) at sample 13."""

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index == 13 and os.getpid() != self.parent:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().__getitem__(index)


@pytest.mark.skipif(sys.platform != "linux", reason="SIGKILL of a forked worker")
def test_a_killed_worker_fails_the_build_and_the_rerun_writes_the_serial_bytes(
    tmp_path: Path,
) -> None:
    def build(source: Mixed, root: Path, workers: int) -> Any:
        steps = [DropEveryFifth(mtkd.NoOptions(), 16)]
        return materialize(
            source, steps, 16, on_error="skip", mode="disk", cache_dir=root, workers=workers
        )

    options = MixedOptions(count=40, broken=[2, 31])
    with pytest.raises(mtkd.DataError, match=r"worker process died \(exit code -9"):
        build(KillsAWorker(options, 16, 0), tmp_path / "two", 2)
    assert not any((tmp_path / "two").iterdir())  # no partial folder, no cache
    _, report = build(Mixed(options, 16, 0), tmp_path / "two", 2)
    assert not report.from_cache and report.kept > 0
    build(Mixed(options, 16, 0), tmp_path / "one", 1)
    _assert_same_cache(tmp_path / "one", tmp_path / "two")


KILLED_PARENT = """
import os, signal, sys, time
sys.path.insert(0, {tests!r})
from test_cache_parallel import Mixed, MixedOptions, _disk_build
from pathlib import Path

class KillsParent(Mixed):
    def __getitem__(self, index):
        if os.getpid() != self.parent:
            with open({pids!r}, "a") as out:
                out.write(f"{{os.getpid()}}\\n")
            if index == 13:
                os.kill(self.parent, signal.SIGKILL)
                time.sleep(30)
        return super().__getitem__(index)

import test_cache_parallel
test_cache_parallel.Mixed = KillsParent
_disk_build(Path({root!r}), 2)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(
        f"/proc/{pid}/status"
    ).read_text().lower().replace("(zombie)", "zombie")


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="workers follow a killed parent on Linux")
def test_a_killed_parallel_build_is_removed_by_the_next_build(tmp_path: Path) -> None:
    pids = tmp_path / "pids.txt"
    root = tmp_path / "cache"
    script = KILLED_PARENT.format(tests=str(Path(__file__).parent), pids=str(pids), root=str(root))
    done = subprocess.run([sys.executable, "-c", script], timeout=120, check=False)
    assert done.returncode == -signal.SIGKILL
    assert list(root.glob(".*.partial"))  # the killed build left its partial folder
    workers = {int(line) for line in pids.read_text().split()}
    deadline = time.time() + 20
    while any(_alive(pid) for pid in workers) and time.time() < deadline:
        time.sleep(0.1)  # the workers die with their parent (PR_SET_PDEATHSIG)
    assert not any(_alive(pid) for pid in workers)
    heard: list[str] = []
    source = Mixed(MixedOptions(), 16, 0)
    cached, report = materialize(
        source, [], 16, on_error="skip", mode="disk", cache_dir=root, workers=2, notify=heard.append
    )
    assert any("left by a cache build that was killed" in line for line in heard)
    assert not list(root.glob(".*.partial")) and report.kept == len(cached) == 23
    serial = tmp_path / "serial"
    materialize(source, [], 16, on_error="skip", mode="disk", cache_dir=serial, workers=1)
    _assert_same_cache(serial, root)  # the rebuilt cache is the one-process cache, byte for byte


def test_cache_workers_default_to_the_cores_but_small_sets_stay_in_one_process() -> None:
    assert cache_workers(None, 10) == 1
    assert 1 <= cache_workers(None, 1000 * MIN_AUTO_SHARD) <= (os.cpu_count() or 1)
    assert cache_workers(2, 1) == 1 and cache_workers(4, 100) == 4
    with pytest.raises(mtkd.RecipeError, match=r"data\.cache_workers: '0'"):
        cache_workers(0, 100)
