"""``mtkd eval RUN``: a saved run evaluated again, on its own data or on another data set.

The run folder is opened as :func:`mtkd.load_run` opens it (:mod:`mtkd.runs.folder`); the
scoring is the one every run gets after training (:func:`mtkd.metrics.assess.assess`). The
results are written beside the run as ``eval-<time>.json``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ..config import load_recipe
from ..data.build import TensorView, build_data
from ..engine.hardware import resolve_device
from ..metrics.assess import assess
from ..plugins import PluginSet
from ..utils.checkpoint import write_json
from ..utils.layout import CONFIG
from .folder import folder_plugins, load_run, read_label_spaces, require_run_folder


def evaluate_run(
    run_dir: str | Path,
    overrides: list[str] | None = None,
    overlays: list[str | Path] | None = None,
    plugins: PluginSet | None = None,
    console: Any = None,
    trust_plugins: bool = False,
) -> dict[str, Any]:
    """Evaluate a saved run again, on its own data or another data set (overrides/overlays).

    When the data's classes are the ones the heads were trained on, everything is scored;
    otherwise (other people) only verification on all samples, and latency.
    """
    run_dir = require_run_folder(run_dir)
    cfg = load_recipe(run_dir / CONFIG, overrides or [], overlays or [])
    if plugins is None:  # plugins named on the command line are the user's own
        plugins = folder_plugins(run_dir, cfg, trust_plugins, list(cfg.plugins))
    data = build_data(cfg, plugins, console)
    trained = read_label_spaces(run_dir)
    same_classes = all(
        data.label_spaces.get(key) is not None and data.label_spaces[key].names == space.names
        for key, space in trained.items()
        if space.kind == "class"
    )
    if not same_classes:
        everything = np.arange(len(data.cached))
        data.holdout = TensorView(data.cached, everything)
    full = load_run(run_dir, distilled=False, plugins=plugins)
    inference = load_run(run_dir, distilled=True, plugins=plugins)
    device = resolve_device(cfg.trainer.device)
    results = assess(
        full.to(device), inference.to(device), data, cfg, device, closed_set=same_classes
    )
    results.update({"run_dir": str(run_dir), "data": data.sizes(), "same_classes": same_classes})
    stamp = time.strftime("%Y%m%d-%H%M%S")
    write_json(run_dir / f"eval-{stamp}.json", results, list_non_finite=True)
    return results
