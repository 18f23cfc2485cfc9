"""One sample cache built by several machines on a shared file system (``data.cache_fs:
shared``): each machine here is a process of its own, with its own cache workers, writing the
same cache folder. They must split the shards, write the one-process cache byte for byte, and
stop together (with the error that stopped them) when a shard fails or the coordinator dies."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import RECIPES
from omegaconf import OmegaConf
from test_cache_parallel import DropEveryFifth, Mixed, MixedOptions, _assert_same_cache

import mtkd
from mtkd.data.build import shared_cache_build
from mtkd.data.cache import materialize
from mtkd.data.cache_parallel import SharedBuild
from mtkd.utils import distributed

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="forked cache workers")

# One machine of a shared build: reads `Mixed` slowly (so both machines get shards), logs
# which machine read which sample, and prints what its build ended with.
MACHINE = """
import json, os, sys, time
sys.path.insert(0, {tests!r})
from pathlib import Path
from test_cache_parallel import DropEveryFifth, Mixed, MixedOptions
import mtkd
from mtkd.data.cache import materialize
from mtkd.data.cache_parallel import SharedBuild

spec = json.loads(sys.argv[1])
if "heartbeat" in spec:
    import mtkd.data.cache_parallel
    mtkd.data.cache_parallel.HEARTBEAT_S = spec["heartbeat"]
if spec.get("local_locks"):  # file locks this machine cannot see others hold
    import mtkd.data.cache_shared
    mtkd.data.cache_shared.holds_lock = lambda partial: False

class Logged(Mixed):
    reads = 0

    def __getitem__(self, index):
        with open(spec["log"], "a") as out:
            out.write(f"{{spec['who']}} {{index}}\\n")
        Logged.reads += 1
        if Logged.reads == spec.get("kill_after"):
            os.kill(self.parent, 9)  # this machine dies mid-build
            time.sleep(30)
        time.sleep(spec.get("delay", 0.03))
        return super().__getitem__(index)

options = MixedOptions(count=spec.get("count", 160), broken=spec.get("broken", [7, 150]))
shared = SharedBuild(spec["job"], spec["coordinator"], 2, spec.get("timeout", 60), spec["who"])
told = []
try:
    cached, report = materialize(
        Logged(options, 16, 0), [DropEveryFifth(mtkd.NoOptions(), 16)], 16,
        on_error=spec.get("on_error", "skip"), mode="disk", cache_dir=Path(spec["root"]),
        workers=spec.get("workers", 1), shared=shared, notify=told.append,
    )
    print(json.dumps({{"n": len(cached), "kept": report.kept, "told": told}}))
except mtkd.MtkdError as exc:
    print(json.dumps({{"error": str(exc)}}))
"""


def _start(tmp_path: Path, who: str, coordinator: bool, **spec: Any) -> subprocess.Popen[str]:
    spec = {
        "who": who,
        "coordinator": coordinator,
        "job": "job1",
        "root": str(tmp_path / "shared"),
        "log": str(tmp_path / "read.log"),
        **spec,
    }
    script = MACHINE.format(tests=str(Path(__file__).parent))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", script, json.dumps(spec)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _outcome(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = proc.communicate(timeout=120)
    lines = out.strip().splitlines()
    assert lines, f"exit {proc.returncode}: {err[-2000:]}"
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def _reads(tmp_path: Path) -> dict[str, list[int]]:
    reads: dict[str, list[int]] = {}
    for line in (tmp_path / "read.log").read_text().split("\n"):
        if line:
            who, index = line.split()
            reads.setdefault(who, []).append(int(index))
    return reads


def _serial(tmp_path: Path, count: int = 160) -> Path:
    root = tmp_path / "serial"
    source = Mixed(MixedOptions(count=count, broken=[7, 150]), 16, 0)
    steps = [DropEveryFifth(mtkd.NoOptions(), 16)]
    materialize(source, steps, 16, on_error="skip", mode="disk", cache_dir=root, workers=1)
    return root


@pytest.mark.slow
def test_two_machines_split_a_shared_build_and_write_the_one_process_cache(
    tmp_path: Path,
) -> None:
    # the joiner starts first (it waits for the layout), and the build lasts about 4 s of
    # reading, so that a loaded machine's slow start still leaves it shards to claim
    joiner = _start(tmp_path, "b", coordinator=False, delay=0.05)
    coordinator = _start(tmp_path, "a", coordinator=True, workers=2, delay=0.05)
    first, second = _outcome(coordinator), _outcome(joiner)
    assert first["n"] == second["n"] == first["kept"] == second["kept"] > 0
    reads = _reads(tmp_path)
    assert reads.get("a") and reads.get("b"), reads  # both machines built shards
    assert any(
        re.fullmatch(r"sample cache: 16 shards built by 2 machines \(a \d+, b \d+\)", line)
        for line in first["told"]
    ), first["told"]
    every = reads["a"] + reads["b"]
    assert sorted(every) == list(range(160))  # each sample read once, by one machine
    _assert_same_cache(_serial(tmp_path), tmp_path / "shared")  # no claims, layout or shards


@pytest.mark.slow
def test_a_failed_shard_stops_every_machine_with_its_error(tmp_path: Path) -> None:
    spec = {"on_error": "fail", "broken": [130]}
    joiner = _start(tmp_path, "b", coordinator=False, **spec)
    coordinator = _start(tmp_path, "a", coordinator=True, **spec)
    for outcome in (_outcome(coordinator), _outcome(joiner)):
        assert "photos/130.png" in outcome.get("error", ""), outcome
    assert not list((tmp_path / "shared").glob("mixed-*"))  # no cache was swapped in


def test_a_machine_that_arrives_after_rank_0_failed_stops_with_rank_0s_error(
    tmp_path: Path,
) -> None:
    source = Mixed(MixedOptions(broken=[3]), 16, 0)
    coordinator = SharedBuild("job", coordinator=True, machines=2)
    with pytest.raises(mtkd.DataError, match=r"photos/3\.png: truncated"):
        materialize(source, [], 16, mode="disk", cache_dir=tmp_path, shared=coordinator)
    late = SharedBuild("job", coordinator=False, machines=2, timeout_s=60)
    started = time.monotonic()
    with pytest.raises(mtkd.DataError, match=r"rank 0 stopped the shared build: .*photos/3\.png"):
        materialize(source, [], 16, mode="disk", cache_dir=tmp_path, shared=late)
    assert time.monotonic() - started < 5  # at once, not after the 60 s wait for a layout


@pytest.mark.slow
def test_a_coordinator_that_dies_ends_the_other_machines_build_and_a_relaunch_completes(
    tmp_path: Path,
) -> None:
    joiner = _start(tmp_path, "b", coordinator=False)
    coordinator = _start(tmp_path, "a", coordinator=True, kill_after=10)
    coordinator.communicate(timeout=120)
    assert coordinator.returncode == -signal.SIGKILL
    started = time.monotonic()
    outcome = _outcome(joiner)
    assert "ended the shared build" in outcome.get("error", ""), outcome
    assert time.monotonic() - started < 30  # it noticed, rather than finishing alone
    # the next launch (a new job id) removes the dead launch's folder and builds the cache
    joiner = _start(tmp_path, "b", coordinator=False, job="job2")
    coordinator = _start(tmp_path, "a", coordinator=True, job="job2")
    assert "n" in _outcome(coordinator) and "n" in _outcome(joiner)
    assert not list((tmp_path / "shared").glob(".*partial*"))
    _assert_same_cache(_serial(tmp_path), tmp_path / "shared")


@pytest.mark.slow
def test_a_machine_that_dies_mid_shard_is_named_once_the_build_has_waited_its_timeout(
    tmp_path: Path,
) -> None:
    joiner = _start(tmp_path, "b", coordinator=False, kill_after=3, heartbeat=0.3, count=60)
    coordinator = _start(tmp_path, "a", coordinator=True, timeout=2, heartbeat=0.3, count=60)
    joiner.communicate(timeout=120)
    assert joiner.returncode == -signal.SIGKILL
    error = _outcome(coordinator).get("error", "")
    assert re.search(r"waited 2 s for shards \d+ \(b on \S+ \d+\).*did a machine die", error)
    assert not list((tmp_path / "shared").glob("mixed-*"))


@pytest.mark.slow
def test_a_slow_machine_that_keeps_touching_its_claims_is_waited_for(tmp_path: Path) -> None:
    # each of the joiner's shards takes about 4 s, more than the coordinator's 1.5 s patience
    # with a silent machine: its heartbeats keep the build going
    joiner = _start(tmp_path, "b", coordinator=False, delay=0.2, heartbeat=0.3)
    coordinator = _start(tmp_path, "a", coordinator=True, timeout=1.5, heartbeat=0.3)
    first, second = _outcome(coordinator), _outcome(joiner)
    assert "n" in first and "n" in second, (first, second)
    assert _reads(tmp_path).get("b")
    _assert_same_cache(_serial(tmp_path), tmp_path / "shared")


@pytest.mark.slow
@pytest.mark.parametrize("coordinator_dies", [False, True])
def test_where_locks_are_local_to_each_machine_the_heartbeat_tells_if_rank_0_lives(
    tmp_path: Path, coordinator_dies: bool
) -> None:
    joiner = _start(tmp_path, "b", coordinator=False, heartbeat=0.3, local_locks=True)
    spec = {"kill_after": 10} if coordinator_dies else {}
    coordinator = _start(tmp_path, "a", coordinator=True, heartbeat=0.3, **spec)
    if coordinator_dies:
        coordinator.communicate(timeout=120)
        started = time.monotonic()
        assert "ended the shared build" in _outcome(joiner).get("error", "")
        assert time.monotonic() - started < 10
    else:  # a live rank 0 is waited for, and its folder is left alone
        first, second = _outcome(coordinator), _outcome(joiner)
        assert "n" in first and "n" in second, (first, second)
        _assert_same_cache(_serial(tmp_path), tmp_path / "shared")


def test_a_machine_with_other_data_says_so(tmp_path: Path) -> None:
    root = tmp_path / "shared"
    coordinator = _start(tmp_path, "a", coordinator=True, delay=0.2, count=160)
    source = Longer(MixedOptions(count=160, broken=[7, 150]), 16, 0)
    with pytest.raises(mtkd.DataError, match=r"reads 161 samples.*reads 160.*cache_fs=local"):
        _join_folder_of(coordinator, source, root)
    coordinator.kill()
    coordinator.communicate()


class Longer(Mixed):
    """``Mixed`` with one sample more than its options say: a data set whose listing differs
    between machines, as one copied incompletely would."""

    def __len__(self) -> int:
        return self.options.count + 1


def _join_folder_of(coordinator: subprocess.Popen[str], source: Mixed, root: Path) -> None:
    """Join the coordinator's build of ``Mixed(count=160)`` with ``source`` instead."""
    from mtkd.data.cache import cache_key
    from mtkd.data.cache_parallel import join_parallel
    from mtkd.data.cache_shared import _wait_for_layout, shared_tag
    from mtkd.data.cache_store import partial_path

    steps = [DropEveryFifth(mtkd.NoOptions(), 16)]
    reference = Mixed(MixedOptions(count=160, broken=[7, 150]), 16, 0)
    folder = root / f"mixed-16px-{cache_key(reference, steps, 16, 'skip', 'squash')}"
    shared = SharedBuild("job1", coordinator=False, machines=2, timeout_s=60)
    partial = partial_path(root, folder.name, shared_tag(shared))
    assert _wait_for_layout(folder, partial, shared)
    join_parallel(source, steps, (16, "skip", "squash"), partial, lambda *_: None, 1, shared)


def test_a_machine_waiting_for_a_coordinator_that_never_starts_names_the_setting(
    tmp_path: Path,
) -> None:
    source = Mixed(MixedOptions(), 16, 0)
    shared = SharedBuild("nobody", coordinator=False, machines=2, timeout_s=0.5)
    with pytest.raises(mtkd.DataError, match=r"waited 0 s for the machine of rank 0.*cache_fs"):
        materialize(source, [], 16, mode="disk", cache_dir=tmp_path, shared=shared)


def test_a_late_machine_reads_the_finished_cache(tmp_path: Path) -> None:
    source = Mixed(MixedOptions(), 16, 0)
    root = tmp_path / "shared"
    coordinator = SharedBuild("job", coordinator=True, machines=2)
    materialize(source, [], 16, mode="disk", cache_dir=root, shared=coordinator)
    late = SharedBuild("job", coordinator=False, machines=2, timeout_s=0.5)
    cached, report = materialize(source, [], 16, mode="disk", cache_dir=root, shared=late)
    assert report.from_cache and len(cached) == 23
    serial = tmp_path / "serial"
    materialize(source, [], 16, mode="disk", cache_dir=serial, workers=1)
    _assert_same_cache(serial, root)  # one machine alone: the serial bytes
    assert not list(root.glob(".*partial*"))


def test_an_empty_data_set_gives_an_empty_cache_on_every_machine(tmp_path: Path) -> None:
    source = Mixed(MixedOptions(count=0), 16, 0)
    for coordinator in (True, False):
        shared = SharedBuild("job", coordinator, machines=2, timeout_s=5)
        cached, report = materialize(source, [], 16, mode="disk", cache_dir=tmp_path, shared=shared)
        assert len(cached) == 0 and report.kept == 0


def _cfg(**data: Any) -> Any:
    return OmegaConf.create({"data": {"cache": "disk", "cache_fs": "shared", **data}})


def test_shared_cache_build_gives_every_rank_rank_0s_job_and_counts_machines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert shared_cache_build(_cfg()) is None  # not under torchrun: nothing to share
    monkeypatch.setattr(distributed, "is_active", lambda: True)
    monkeypatch.setattr(distributed, "rank", lambda: 8)
    monkeypatch.setattr(distributed, "world_size", lambda: 16)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    monkeypatch.setattr(distributed, "broadcast_object", lambda value: "rank-0-job")
    shared = shared_cache_build(_cfg())
    assert shared == SharedBuild("rank-0-job", False, machines=2, timeout_s=1800, member="rank 8")
    monkeypatch.setenv("MTKD_DIST_TIMEOUT_S", "600")  # rank 0 waits as long as a collective
    assert shared_cache_build(_cfg()) == SharedBuild("rank-0-job", False, 2, 600, "rank 8")
    assert shared_cache_build(_cfg(cache="memory")) is None
    assert shared_cache_build(_cfg(cache_fs="local")) is None


def test_an_unknown_or_pointless_cache_fs_names_the_keys() -> None:
    with pytest.raises(mtkd.RecipeError, match=r"data\.cache_fs: 'nfs' is not one of local"):
        mtkd.load_recipe(RECIPES / "seg_distilled_id.yaml", ["data.cache_fs=nfs"])
    with pytest.raises(mtkd.RecipeError, match=r"data\.cache_fs: 'shared'.*set data\.cache=disk"):
        mtkd.load_recipe(
            RECIPES / "seg_distilled_id.yaml", ["data.cache_fs=shared", "data.cache=memory"]
        )
