"""The run folder: what a run writes, and how a saved run becomes a model again.

<run>/config.yaml          the merged recipe (rerun it with ``mtkd run <run>/config.yaml``)
<run>/labels.json          the label spaces (class names) the heads were built for
<run>/metrics.jsonl        one line per epoch
<run>/checkpoints/         last/ (weights, optimizer, counters) and best.safetensors
<run>/distilled/           model.safetensors + tasks.json: the inference model
<run>/results.json         parameter counts, test metrics before and after distillation
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from ..config import load_recipe
from ..errors import MtkdError
from ..model.build import build_model
from ..model.multitask import MultiTaskModel
from ..plugins import PluginSet
from ..samples import LabelSpace
from ..utils.checkpoint import load_weights, save_weights, write_json

CONFIG = "config.yaml"
LABELS = "labels.json"
RESULTS = "results.json"
DISTILLED = "distilled"


def new_run_dir(cfg: DictConfig) -> Path:
    """``output.dir`` if set, else ``<output.root>/<name>-<timestamp>`` (never reused)."""
    if cfg.output.dir:
        path = Path(cfg.output.dir)
        if (path / RESULTS).exists():
            raise MtkdError(f"output.dir: '{path}' already holds a finished run; choose another")
        path.mkdir(parents=True, exist_ok=True)
        return path
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(cfg.output.root) / f"{cfg.name}-{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    path.mkdir(parents=True)
    return path


def write_run_header(run_dir: Path, cfg: DictConfig, label_spaces: dict[str, LabelSpace]) -> None:
    (run_dir / CONFIG).write_text(OmegaConf.to_yaml(cfg))
    write_json(run_dir / LABELS, {k: v.to_dict() for k, v in label_spaces.items()})


def save_distilled(run_dir: Path, model: MultiTaskModel) -> None:
    save_weights(model, run_dir / DISTILLED / "model.safetensors")
    write_json(
        run_dir / DISTILLED / "tasks.json",
        {"tasks": list(model.tasks), "taps": list(model.encoder.tap_names)},
    )


def read_label_spaces(run_dir: Path) -> dict[str, LabelSpace]:
    data = json.loads((run_dir / LABELS).read_text())
    return {k: LabelSpace.from_dict(v) for k, v in data.items()}


def load_run(
    run_dir: str | Path, *, distilled: bool = True, plugins: PluginSet | None = None
) -> MultiTaskModel:
    """Rebuild a saved run's model (the distilled one by default) with its trained weights."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).is_file():
        raise MtkdError(f"'{run_dir}' is not a run folder (no {CONFIG})")
    cfg = load_recipe(run_dir / CONFIG)
    model = build_model(cfg, read_label_spaces(run_dir), plugins)
    if distilled:
        info_path = run_dir / DISTILLED / "tasks.json"
        if not info_path.is_file():
            raise MtkdError(f"'{run_dir}' has no distilled model (the run did not finish)")
        info: dict[str, Any] = json.loads(info_path.read_text())
        model = model.without_tasks([k for k in model.tasks if k not in info["tasks"]])
        load_weights(model, run_dir / DISTILLED / "model.safetensors")
    else:
        load_weights(model, run_dir / "checkpoints" / "best.safetensors")
    model.eval()
    return model


def evaluate_run(
    run_dir: str | Path,
    overrides: list[str] | None = None,
    overlays: list[str | Path] | None = None,
    plugins: PluginSet | None = None,
    console: Any = None,
) -> dict[str, Any]:
    """Evaluate a saved run again, on its own data or another data set (overrides/overlays).

    When the data's classes are the ones the heads were trained on, everything is scored;
    otherwise (other people) only verification on all samples, and latency.
    """
    from ..data.build import TensorView, build_data
    from ..engine.fit import resolve_device
    from ..metrics.assess import assess

    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).is_file():
        raise MtkdError(f"'{run_dir}' is not a run folder (no {CONFIG})")
    cfg = load_recipe(run_dir / CONFIG, overrides or [], overlays or [])
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
    write_json(run_dir / f"eval-{stamp}.json", results)
    return results
