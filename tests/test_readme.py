"""The README's library example runs as written, and its two commands stay at the top."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from helpers import REPO

README = (REPO / "README.md").read_text()


def test_readme_library_example_runs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    code = re.search(r"## Library\n\n```python\n(.*?)```", README, re.S)
    assert code is not None
    assert len(code.group(1).strip().splitlines()) <= 12
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("COLUMNS", "120")
    exec(compile(code.group(1), "README.md", "exec"), {})


def test_readme_starts_with_the_install_and_run_and_the_test_commands() -> None:
    blocks = re.findall(r"```bash\n(.*?)```", README, re.S)
    assert "mtkd run recipes/seg_distilled_id.yaml" in blocks[0]
    assert "pytest" in blocks[1]
    ci = (REPO / ".ci" / "run").read_text()
    assert blocks[1].strip().split("&& ")[-1] in ci  # CI calls the README's test command
    assert os.access(REPO / ".ci" / "run", os.R_OK)
