"""benchmarks/scale.py (issue 26) runs end to end at a tiny size, so it cannot rot."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "scale.py"


def _module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("scale_benchmark", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_generated_data_set_is_an_identity_folder_written_once(tmp_path: Path) -> None:
    scale = _module()
    folder = scale.write_folder(tmp_path, 120, 24)
    people = sorted(p.name for p in folder.iterdir() if p.is_dir())
    assert len(people) == 120 // scale.PER_PERSON + 1
    assert len(list(folder.glob("person*/*.jpg"))) == 120
    first = folder / "person00000" / "000.jpg"
    stamp = first.stat().st_mtime_ns
    assert scale.write_folder(tmp_path, 120, 24) == folder  # reused, not written again
    assert first.stat().st_mtime_ns == stamp
    (folder / ".complete").unlink()  # an interrupted write is redone
    scale.write_folder(tmp_path, 120, 24)
    assert (folder / ".complete").is_file()


@pytest.mark.slow
def test_the_scale_benchmark_prints_every_figure_at_a_tiny_size(tmp_path: Path) -> None:
    args = ["--images", "200", "--small", "100", "--side", "48", "--image-size", "32"]
    args += ["--root", str(tmp_path), "--loader-images", "64", "--rounds", "1"]
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert "byte-identical caches: True" in out
    assert re.search(r"2 workers / 1 worker: [\d.]+x wall-clock", out)
    assert re.search(r"1\s+building\s+\d+\s+\d+\s+[\d.]+x", out)  # peak memory, both sizes
    assert re.search(r"flip\+colour\+affine(\s+\d+){2}\s+[\d.]+x", out)
    assert "images float32 0.38 MiB, as uint8 0.09 MiB (4x)" in out  # 32 x 3 x 32 x 32
