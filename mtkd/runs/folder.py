"""The run folder: taking a folder for a new run, and how a saved run becomes a model again
(the names of what a run writes, and :func:`run_status`, are in :mod:`mtkd.utils.layout`).

A folder holds one run: a new run into a folder holding another is refused (``--force``
deletes the old run's files first), so no checkpoint is overwritten and no metrics mixed.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..config import load_recipe
from ..errors import MtkdError
from ..model.build import build_model
from ..model.multitask import MultiTaskModel
from ..plugins import PluginSet
from ..samples import LabelSpace
from ..utils.checkpoint import load_weights, save_weights, write_json
from ..utils.files import write_text_atomic
from ..utils.layout import (
    CONFIG,
    DISTILLED,
    LABELS,
    METRICS,
    RUN_ENTRIES,
    TASKS,
    RunStatus,
    best_weights,
    distilled_weights,
    run_status,
)
from .trust import run_folder_plugins


def require_run_folder(run_dir: str | Path) -> Path:
    """``run_dir`` as a Path, if it is a run folder (it holds config.yaml); else one line."""
    path = Path(run_dir)
    if not (path / CONFIG).is_file():
        why = "it does not exist" if not path.exists() else f"no {CONFIG}"
        raise MtkdError(f"'{path}' is not a run folder ({why})")
    return path


def _refuse_held_run(path: Path, held: RunStatus) -> None:
    fresh = "or pass --force to start it afresh (this deletes the run's files)"
    if held in ("interrupted", "crashed"):
        what = "an interrupted run" if held == "interrupted" else "a run that crashed at its end"
        raise MtkdError(
            f"output.dir: '{path}' holds {what}; continue it with "
            f"`mtkd resume {path}`, choose another folder, {fresh}"
        )
    what = "a finished run" if held == "finished" else "a run stopped before its first checkpoint"
    raise MtkdError(f"output.dir: '{path}' already holds {what}; choose another folder, {fresh}")


def _check_writable(target: Path, key: str) -> None:
    """``target`` (or the nearest folder above it that exists) takes new files."""
    existing = next(p for p in (target, *target.parents) if p.exists() or p == p.parent)
    if not existing.is_dir():
        raise MtkdError(f"{key}: '{existing}' is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise MtkdError(
            f"{key}: cannot write in '{existing}' ({exc.strerror or exc}); "
            "choose a folder you can write to"
        ) from exc


def check_output_dir(cfg: DictConfig, force: bool = False) -> None:
    """Before anything is built: the run folder can be written, and holds no other run.

    A new run never shares a folder with another: a finished or interrupted run in
    ``output.dir`` is refused (``force``: its files are deleted when the new run starts), so
    no checkpoint is overwritten and no epoch is appended to another run's metrics."""
    key = "output.dir" if cfg.output.dir else "output.root"
    target = Path(cfg.output.dir or cfg.output.root)
    _check_writable(target, key)
    held = run_status(target) if cfg.output.dir else None
    if held and not force:
        _refuse_held_run(target, held)


def clear_run(path: Path) -> None:
    """Delete what a run wrote in ``path`` (other files stay)."""
    for pattern in RUN_ENTRIES:
        for entry in path.glob(pattern):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()


def new_run_dir(cfg: DictConfig, force: bool = False, console: Any = None) -> Path:
    """``output.dir`` if set, else ``<output.root>/<name>-<timestamp>`` (never reused).

    ``output.dir`` holding another run is refused, or with ``force`` emptied of it first (an
    MLflow run it logged is tagged replaced; ``console`` is told)."""
    check_output_dir(cfg, force)
    if cfg.output.dir:
        path = Path(cfg.output.dir)
        if force and run_status(path):
            from .mlflow_logger import mark_replaced

            line = mark_replaced(path)
            if line and console is not None:
                console.print(line, highlight=False)
            clear_run(path)
        _make_dir(path, "output.dir", exist_ok=True)
        return path
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(cfg.output.root) / f"{cfg.name}-{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    _make_dir(path, "output.root", exist_ok=False)
    return path


def _make_dir(path: Path, key: str, exist_ok: bool) -> None:
    try:
        path.mkdir(parents=True, exist_ok=exist_ok)
    except OSError as exc:
        raise MtkdError(f"{key}: cannot create '{path}': {exc.strerror or exc}") from exc


def write_run_header(run_dir: Path, cfg: DictConfig, label_spaces: dict[str, LabelSpace]) -> None:
    if (run_dir / METRICS).exists():  # new_run_dir guarantees a fresh folder; never mix runs
        raise MtkdError(f"'{run_dir}' already holds {METRICS}: it would mix two runs' epochs")
    write_text_atomic(run_dir / CONFIG, OmegaConf.to_yaml(cfg))
    write_json(run_dir / LABELS, {k: v.to_dict() for k, v in label_spaces.items()})


def save_distilled(run_dir: Path, model: MultiTaskModel) -> None:
    save_weights(model, distilled_weights(run_dir))
    write_json(
        run_dir / DISTILLED / TASKS,
        {"tasks": list(model.tasks), "taps": list(model.encoder.tap_names)},
    )


def read_label_spaces(run_dir: Path) -> dict[str, LabelSpace]:
    """The label spaces the heads were built for; a missing or broken file is one line."""
    path = Path(run_dir) / LABELS
    if not path.is_file():
        raise MtkdError(f"'{path}' is missing: the run folder is incomplete (it names the classes)")
    try:
        data = json.loads(path.read_text())
        spaces = {k: LabelSpace.from_dict(v) for k, v in data.items()}
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise MtkdError(f"'{path}' is corrupt: {type(exc).__name__}: {exc}") from exc
    if not spaces:  # a run writes the label space of every task it trained
        raise MtkdError(f"'{path}' is damaged: it lists no label space (a run writes one per task)")
    return spaces


def folder_plugins(
    run_dir: Path, cfg: DictConfig, trust: bool, user_refs: Sequence[str] = ()
) -> PluginSet:
    """The plugins to open ``run_dir`` with: those its config.yaml names (trusted or not, see
    :mod:`mtkd.runs.trust`) and ``user_refs``, the user's own."""
    saved = load_recipe(run_dir / CONFIG).plugins if user_refs else cfg.plugins
    extra = [str(r) for r in user_refs if r not in saved]
    return run_folder_plugins(list(saved), run_dir / CONFIG, trust=trust, extra=extra)


def load_run(
    run_dir: str | Path,
    *,
    distilled: bool = True,
    plugins: PluginSet | None = None,
    trust_plugins: bool = False,
) -> MultiTaskModel:
    """Rebuild a saved run's model (the distilled one by default) with its trained weights.

    Without ``plugins``, the installed plugins load; those the folder's config.yaml names
    load only with ``trust_plugins`` (or MTKD_TRUST_PLUGINS=1): see :mod:`mtkd.runs.trust`.
    Weights are checked against their checksums and for NaN/Inf.
    """
    run_dir = require_run_folder(run_dir)
    cfg = load_recipe(run_dir / CONFIG)
    # the trained weights replace any starting weights: no hub download, no zoo entry needed
    cfg.encoder.pretrained, cfg.encoder.weights = False, None
    if plugins is None:
        plugins = folder_plugins(run_dir, cfg, trust_plugins)
    model = build_model(cfg, read_label_spaces(run_dir), plugins)
    if distilled:
        info_path = run_dir / DISTILLED / TASKS
        if not info_path.is_file():
            raise MtkdError(f"'{run_dir}' has no distilled model (the run did not finish)")
        info: dict[str, Any] = json.loads(info_path.read_text())
        model = model.without_tasks([k for k in model.tasks if k not in info["tasks"]])
        load_weights(model, distilled_weights(run_dir))
    else:
        load_weights(model, best_weights(run_dir))
    model.eval()
    return model
