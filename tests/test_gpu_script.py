"""benchmarks/gpu_table1.sh, the prepared GPU run of Table 1, through its CPU path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO

TABLE1 = ("mobilenetv2_id", "resnet101_id", "vgg19_id", "inceptionv3_id", "seg_distilled_id")


def _script(out: Path, timeout: int, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_table1.sh"), str(out)],
        env={**os.environ, "PYTHON": sys.executable, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_the_gpu_table1_script_runs_its_cpu_path_and_prints_throughput(tmp_path: Path) -> None:
    done = _script(tmp_path / "table1", 900, PROFILE="cpu-smoke")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    for recipe in TABLE1:
        assert (tmp_path / "table1" / f"{recipe}-seed0" / "results.json").is_file()
        lines = [line.split() for line in out.splitlines() if "training images/s" in line]
        speed = next(float(words[1]) for words in lines if words[0] == recipe)
        assert speed > 0
        assert f"| {recipe} | 1 |" in out  # the results table
    assert "train img/s" in out


@pytest.mark.slow
def test_the_gpu_path_refuses_a_machine_without_cuda(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the refusal applies to machines without it")
    done = _script(tmp_path / "t", 120)
    assert done.returncode != 0
    assert "no CUDA device" in done.stderr and "PROFILE=cpu-smoke" in done.stderr
