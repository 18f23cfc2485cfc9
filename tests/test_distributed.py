"""Data-parallel training through torchrun: two CPU processes (gloo) must train the weights
one process trains on the same global batches, and distil the same inference model; the
sample cache is built once per machine (or split between machines on a shared file system),
however long it takes; a killed job resumes to the uninterrupted job's weights and logs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from helpers import RECIPES, tiny_overrides
from safetensors.torch import load_file
from test_cache_parallel import _assert_same_cache
from test_resume import INTERRUPTER, assert_same_run

import mtkd
from mtkd.utils import distributed

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="no torch.distributed")

# Saves, per rank, the trained model, the model the distill hook makes of it, and the
# loss-weighting state: what the ranks must agree on.
PROBE = """
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

import mtkd
from mtkd.utils import distributed


def _save(tensors, name):
    out = Path(os.environ["MTKD_TEST_OUT"])
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(out / name))


@mtkd.hookimpl
def on_train_end(context):
    rank = distributed.rank()
    _save(context.model.state_dict(), f"trained-{rank}.safetensors")
    _save(mtkd.distill(context.model).state_dict(), f"student-{rank}.safetensors")
    state = context.weighting.state_dict()
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if tensors:
        _save(tensors, f"weighting-{rank}.safetensors")
"""

# No BatchNorm anywhere (GroupNorm encoder, linear heads): batch statistics on half a batch
# would differ from the whole batch's, and PyTorch syncs BatchNorm on GPUs only.
OVERRIDES = [
    "encoder.name=test_efficientnet_gn",
    "data.cache=memory",
    "data.split.test=0.2",
    "data.split.val=0.25",
    "trainer.progress=false",
    "evaluate.latency=false",
    "evaluate.verification=false",
    "output.plots=false",
]


def _mtkd_run(out: Path, *extra: str, ranks: int = 1) -> subprocess.CompletedProcess[str]:
    out.mkdir(parents=True)
    plugin = out / "probe.py"
    plugin.write_text(PROBE)
    args = [
        "run",
        str(RECIPES / "pose_distilled_id.yaml"),
        str(RECIPES / "profiles" / "tiny.yaml"),
        *OVERRIDES,
        f"plugins=[{plugin}]",
        f"output.dir={out / 'run'}",
        *extra,
    ]
    return _launch(args, ranks, MTKD_TEST_OUT=str(out))


def _launch(args: list[str], ranks: int, **env: str) -> subprocess.CompletedProcess[str]:
    """``mtkd <args>`` in one process, or in ``ranks`` under torchrun on this host; it must
    succeed."""
    launcher = [sys.executable, "-m", "mtkd"]
    if ranks > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        launcher += [f"--nproc_per_node={ranks}", "-m", "mtkd"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    done = subprocess.run(
        launcher + args, env=environment, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


@pytest.mark.slow
def test_two_cpu_processes_train_the_weights_one_process_trains(tmp_path: Path) -> None:
    _mtkd_run(tmp_path / "single")
    done = _mtkd_run(tmp_path / "ddp", ranks=2)
    single = load_file(str(tmp_path / "single" / "trained-0.safetensors"))
    rank0 = load_file(str(tmp_path / "ddp" / "trained-0.safetensors"))
    rank1 = load_file(str(tmp_path / "ddp" / "trained-1.safetensors"))
    assert _max_difference(rank0, rank1) == 0.0  # DDP keeps the replicas identical
    assert _max_difference(rank0, single) < 5e-4  # same global batches: the same training
    student0 = load_file(str(tmp_path / "ddp" / "student-0.safetensors"))
    student1 = load_file(str(tmp_path / "ddp" / "student-1.safetensors"))
    assert not any(k.startswith("heads.pose.") for k in student0)  # the teacher is gone
    assert _max_difference(student0, student1) == 0.0
    # rank 0 alone wrote the run: one log line per epoch, and the results
    run = tmp_path / "ddp" / "run"
    epochs = (run / "metrics.jsonl").read_text().splitlines()
    assert len(epochs) == 2
    results = json.loads((run / "results.json").read_text())
    assert results["removed_tasks"] == ["pose"]
    assert done.stdout.count("test results") == 1
    # the validation metrics, reduced over both ranks' shards, match one process's
    one = json.loads((tmp_path / "single" / "run" / "metrics.jsonl").read_text().splitlines()[0])
    two = json.loads(epochs[0])
    assert two["val/identification/count"] == one["val/identification/count"]
    assert two["val/loss"] == pytest.approx(one["val/loss"], rel=1e-4)


@pytest.mark.slow
def test_learned_loss_weights_stay_identical_on_every_rank(tmp_path: Path) -> None:
    _mtkd_run(tmp_path / "ddp", "trainer.weighting.name=gradnorm", ranks=2)
    weights0 = load_file(str(tmp_path / "ddp" / "weighting-0.safetensors"))
    weights1 = load_file(str(tmp_path / "ddp" / "weighting-1.safetensors"))
    assert torch.equal(weights0["task_weights"], weights1["task_weights"])
    assert not torch.equal(weights0["task_weights"], torch.ones(2))  # they were learned
    assert float(weights0["task_weights"].sum()) == pytest.approx(2.0, abs=1e-4)
    rank0 = load_file(str(tmp_path / "ddp" / "trained-0.safetensors"))
    rank1 = load_file(str(tmp_path / "ddp" / "trained-1.safetensors"))
    assert _max_difference(rank0, rank1) == 0.0


def test_a_global_batch_that_does_not_divide_over_the_ranks_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    with pytest.raises(mtkd.RecipeError, match=r"data\.batch_size.*8.*3 processes"):
        distributed.shard(list(range(20)), 8)


def test_each_rank_takes_a_strided_share_of_every_global_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    shares = []
    for me in (0, 1):
        monkeypatch.setattr(distributed, "rank", lambda me=me: me)
        shares.append(distributed.shard(list(range(11)), 4))
    # global batches [0-3], [4-7], [8-10]: each split over the two ranks
    assert shares == [[0, 2, 4, 6, 8, 10], [1, 3, 5, 7, 9]]
    monkeypatch.setattr(distributed, "rank", lambda: 0)
    assert distributed.shard(list(range(9)), 4) == [0, 2, 4, 6]  # a last batch of 1 is dropped


@pytest.mark.slow
def test_a_gradient_aggregator_keeps_the_ranks_identical_and_trains_as_one_process(
    tmp_path: Path,
) -> None:
    """The Jacobian is averaged over ranks before it is aggregated: two processes aggregate
    the global batch's task gradients, as one process does, and agree bit for bit."""
    upgrad = ["trainer.weighting.name=aggregate", "trainer.weighting.method=upgrad"]
    _mtkd_run(tmp_path / "single", *upgrad)
    _mtkd_run(tmp_path / "ddp", *upgrad, ranks=2)
    single = load_file(str(tmp_path / "single" / "trained-0.safetensors"))
    rank0 = load_file(str(tmp_path / "ddp" / "trained-0.safetensors"))
    rank1 = load_file(str(tmp_path / "ddp" / "trained-1.safetensors"))
    assert _max_difference(rank0, rank1) == 0.0
    assert _max_difference(rank0, single) < 5e-4
    logged = (tmp_path / "ddp" / "run" / "metrics.jsonl").read_text().splitlines()
    assert "grad_cos/identification__pose" in json.loads(logged[-1])


@pytest.mark.slow
@pytest.mark.parametrize(
    "weighting",
    [[], ["trainer.weighting.name=aggregate", "trainer.weighting.method=nash_mtl"]],
    ids=["fixed", "nash_mtl"],
)
def test_a_teacher_without_labels_on_a_rank_and_a_frozen_encoder_do_not_stall_ddp(
    tmp_path: Path, weighting: list[str]
) -> None:
    # few masks: some ranks' shares of a batch carry none, so that rank's teacher loss is a
    # zero that keeps the decoder in the graph; the frozen first epoch rebuilds the DDP wrapper
    out = tmp_path / "ddp"
    out.mkdir()
    (out / "probe.py").write_text(PROBE)
    args = [
        "run",
        str(RECIPES / "seg_distilled_id.yaml"),
        "encoder.name=mobilenetv2_035",
        "data.dataset.name=random_images",
        "data.dataset.identities=4",
        "data.dataset.views=8",
        "data.dataset.mask_fraction=0.25",
        "data.image_size=32",
        "data.batch_size=8",
        "trainer.max_epochs=2",
        "trainer.freeze_encoder_epochs=1",
        *OVERRIDES[1:],
        f"plugins=[{out / 'probe.py'}]",
        f"output.dir={out / 'run'}",
        *weighting,
    ]
    _launch(args, ranks=2, MTKD_TEST_OUT=str(out))
    rank0 = load_file(str(out / "trained-0.safetensors"))
    rank1 = load_file(str(out / "trained-1.safetensors"))
    assert _max_difference(rank0, rank1) == 0.0
    assert len((out / "run" / "metrics.jsonl").read_text().splitlines()) == 2
    if weighting:  # the aggregator's running state agrees too
        state0 = load_file(str(out / "weighting-0.safetensors"))
        state1 = load_file(str(out / "weighting-1.safetensors"))
        assert _max_difference(state0, state1) == 0.0


@pytest.mark.parametrize(
    ("rank", "local_rank", "builds_first"),
    [(0, 0, True), (8, 0, True), (1, 1, False), (9, 1, False)],
)
def test_each_machines_local_rank_0_builds_the_cache_before_the_other_ranks_read_it(
    monkeypatch: pytest.MonkeyPatch, rank: int, local_rank: int, builds_first: bool
) -> None:
    # rank 8 is local rank 0 of a second machine with 8 GPUs: without a shared file system
    # it must build that machine's cache itself, not wait for global rank 0's
    events: list[str] = []
    monkeypatch.setattr(distributed, "is_active", lambda: True)
    monkeypatch.setattr(distributed, "rank", lambda: rank)
    monkeypatch.setenv("LOCAL_RANK", str(local_rank))
    monkeypatch.setattr(distributed, "long_barrier", lambda: events.append("barrier"))
    with distributed.node_main_first():
        events.append("build or read")
    assert events == (
        ["build or read", "barrier"] if builds_first else ["barrier", "build or read"]
    )


def test_outside_torchrun_the_process_is_its_machines_local_rank_0(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LOCAL_RANK", "3")  # left over in the environment: not launched
    assert distributed.local_rank() == 0


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.slow
def test_two_machines_on_a_shared_file_system_split_the_cache_build(tmp_path: Path) -> None:
    # two torchrun agents on this host stand for two machines (each rank is its machine's
    # local rank 0) that see one cache folder
    data = [
        "data.cache=disk",
        "data.dataset.identities=24",
        "data.dataset.views=40",
        "trainer.max_epochs=1",
    ]
    args = [
        "run",
        str(RECIPES / "pose_distilled_id.yaml"),
        str(RECIPES / "profiles" / "tiny.yaml"),
        *OVERRIDES[:1],
        *OVERRIDES[2:],
        *data,
        f"data.cache_dir={tmp_path / 'shared'}",
        "data.cache_fs=shared",
        f"output.dir={tmp_path / 'run'}",
    ]
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1"]
    rendezvous = ["--master_addr=127.0.0.1", f"--master_port={port}"]
    nodes = [
        subprocess.Popen(
            [*launcher, f"--node_rank={node}", *rendezvous, "-m", "mtkd", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for node in (0, 1)
    ]
    logs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    # rank 0 says who built the shards (on a loaded machine one rank may take them all)
    shares = r"sample cache: \d+ shards built by [12] machines? \(rank [01] \d+"
    assert re.search(shares, logs[0]), logs[0][-3000:]
    # the same cache, byte for byte, as one process builds without sharing
    cfg = mtkd.load_recipe(
        RECIPES / "pose_distilled_id.yaml",
        [*OVERRIDES[:1], *data, f"data.cache_dir={tmp_path / 'local'}", "data.cache_workers=1"],
        overlays=[RECIPES / "profiles" / "tiny.yaml"],
    )
    mtkd.build_data(cfg)
    _assert_same_cache(tmp_path / "local", tmp_path / "shared")


# A preprocessor that makes the cache build outlast the collectives' timeout.
SLOW_STEP = """
import time

import mtkd


class Slow(mtkd.Preprocessor):
    name = "slow"

    def __call__(self, sample):
        time.sleep(0.04)
        return sample


@mtkd.hookimpl
def register_preprocessors(register):
    register(Slow)
"""


@pytest.mark.slow
def test_the_other_ranks_wait_for_a_cache_build_longer_than_the_collective_timeout(
    tmp_path: Path,
) -> None:
    plugin = tmp_path / "slow_step.py"
    plugin.write_text(SLOW_STEP)
    args = [
        "run",
        str(RECIPES / "pose_distilled_id.yaml"),
        str(RECIPES / "profiles" / "tiny.yaml"),
        *OVERRIDES[:1],
        *OVERRIDES[2:],
        "data.cache=disk",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.cache_workers=1",
        "data.preprocess=[{name: slow}]",
        "trainer.max_epochs=1",
        f"plugins=[{plugin}]",
        f"output.dir={tmp_path / 'run'}",
    ]
    # 60 samples x 40 ms: local rank 0 builds for about 2.4 s while rank 1 waits; every
    # collective gives up after 1 s
    started = time.monotonic()
    _launch(args, ranks=2, MTKD_DIST_TIMEOUT_S="1")
    assert time.monotonic() - started > 2.4
    assert (tmp_path / "run" / "results.json").is_file()


def test_a_bad_collective_timeout_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MTKD_DIST_TIMEOUT_S", "soon")
    with pytest.raises(mtkd.RecipeError, match=r"MTKD_DIST_TIMEOUT_S: 'soon'"):
        distributed.collective_timeout()
    monkeypatch.setenv("MTKD_DIST_TIMEOUT_S", "90")
    assert distributed.collective_timeout().total_seconds() == 90


def _torchrun(*args: str, stop_at: int = 0) -> subprocess.CompletedProcess[str]:
    """``mtkd <args>`` in two ranks under torchrun; with ``stop_at``, every rank kills itself
    (SIGKILL) at that step, as a lost machine would end the job."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    launcher += ["--nproc_per_node=2", "-m", "mtkd"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MTKD_TEST_STOP_AT": str(stop_at)}
    env["MTKD_TEST_SIGNAL"] = "SIGKILL"
    return subprocess.run([*launcher, *args], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_a_job_killed_mid_epoch_resumes_under_torchrun_to_the_uninterrupted_weights(
    tmp_path: Path,
) -> None:
    plugin = tmp_path / "interrupter.py"
    plugin.write_text(INTERRUPTER)
    overrides = tiny_overrides(
        tmp_path,
        **{
            "encoder.name": "mobilenetv2_035",
            "data.batch_size": 4,  # the global batch: 2 a rank, 4 steps an epoch
            "data.cache": "memory",
            "trainer.max_epochs": 2,
            "trainer.checkpoint_every": 1,
            "trainer.scheduler": "cosine",
            "data.augment.hflip": 0.5,  # each rank's random state must come back too
            "evaluate.latency": "false",
            "evaluate.verification": "false",
            "output.plots": "false",
        },
    )

    def args(name: str) -> list[str]:
        recipe = str(RECIPES / "seg_distilled_id.yaml")
        return ["run", recipe, *overrides, f"plugins=[{plugin}]", "--out", str(tmp_path / name)]

    straight = _torchrun(*args("straight"))
    assert straight.returncode == 0, straight.stderr[-3000:]
    assert _torchrun(*args("killed"), stop_at=6).returncode != 0  # epoch 2, step 2
    assert not (tmp_path / "killed" / "results.json").exists()
    resumed = _torchrun("resume", str(tmp_path / "killed"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed at epoch 2, step 2" in resumed.stdout
    assert_same_run(tmp_path / "straight", tmp_path / "killed")
