"""Shared fixtures: tiny recipes that train in a second on the CPU."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import RECIPES, tiny_overrides
from omegaconf import DictConfig

import mtkd

# one torch thread per pytest-xdist worker (`pytest -n 2` on 2 cores); two threads alone
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


@pytest.fixture
def tiny_recipe(tmp_path: Path) -> Callable[..., DictConfig]:
    """``tiny_recipe("seg_distilled_id", **overrides)`` loads a real recipe at smoke size."""

    def load(name: str = "seg_distilled_id", **extra: Any) -> DictConfig:
        if name == "seg_distilled_id":
            extra.setdefault("encoder.name", "mobilenetv2_035")
        return mtkd.load_recipe(RECIPES / f"{name}.yaml", tiny_overrides(tmp_path, **extra))

    return load


@pytest.fixture(autouse=True)
def _isolated_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """Every installed plugin loads, and the sample cache lives in a per-session folder."""
    monkeypatch.delenv("MTKD_PLUGINS", raising=False)
    monkeypatch.setenv("MTKD_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "sample-cache"))
    yield
