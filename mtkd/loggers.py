"""Experiment loggers: where a run's records go besides its own folder (TensorBoard, MLflow, ...).

A logger is a class registered through the ``register_loggers`` hook and picked by name in
``output.loggers``. mtkd makes one instance per run, on rank 0 only, and calls it in this
order: :meth:`Logger.start` (before the first epoch, or again when ``mtkd resume`` continues
the run), :meth:`Logger.log_epoch` once per epoch (the record ``metrics.jsonl`` holds),
:meth:`Logger.log_images` every ``output.images_every`` epochs if :attr:`Logger.wants_images`,
:meth:`Logger.end` with the final results and the run's files, and :meth:`Logger.close` last,
whatever happened. Every method but ``start`` has a do-nothing default.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from omegaconf import DictConfig, OmegaConf

from .errors import RecipeError

Status = Literal["finished", "interrupted", "failed"]


@dataclass(frozen=True)
class RunStart:
    """What a logger learns when a run starts or resumes."""

    recipe: DictConfig  # the merged recipe (the run folder's config.yaml)
    run_dir: Path
    resumed: bool  # True when ``mtkd resume`` continues a run this logger saw start
    experiment: str  # what groups runs: a study's name, else the recipe's name


class Logger:
    """Base class of experiment loggers; subclass it and register it with ``register_loggers``.

    ``requires`` lists modules the logger imports; when one is missing, asking for the logger
    fails before training with ``pip install '<install>'``.
    """

    name: ClassVar[str] = ""  # the registry name: an entry of ``output.loggers``
    requires: ClassVar[tuple[str, ...]] = ()  # modules the logger imports
    install: ClassVar[str] = ""  # the pip requirement that provides ``requires``
    wants_images: ClassVar[bool] = False  # log_images gets predicted-mask sheets when True

    def __init__(self, cfg: DictConfig) -> None:
        """``cfg`` is the merged recipe; open nothing yet (that is :meth:`start`'s job)."""
        self.cfg = cfg

    @classmethod
    def check_installed(cls) -> None:
        """Raise a one-line RecipeError naming the install command if a requirement is missing."""
        for module in cls.requires:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                raise RecipeError(
                    f"output.loggers: the '{cls.name}' logger needs the '{module}' package, "
                    f"which is not installed: pip install '{cls.install or module}'"
                ) from exc

    @classmethod
    def check_reachable(cls, cfg: DictConfig) -> None:
        """Raise a one-line error if a server the logger writes to does not answer (called
        before any work, so an unreachable tracker never hangs a run mid-way)."""

    def start(self, run: RunStart) -> None:
        """Open (or, when ``run.resumed``, reopen) this run's record."""

    def log_epoch(self, epoch: int, record: Mapping[str, Any]) -> None:
        """One epoch's record: ``train/...`` and ``val/...`` losses and metrics, ``lr``
        (``lr/<group>`` too when parameter groups differ), ``weight/<task>`` for learned loss
        weights, times. Values are numbers or booleans."""

    def log_images(self, epoch: int, images: Mapping[str, np.ndarray]) -> None:
        """Named (H, W, 3) uint8 images, e.g. ``predictions/segmentation``."""

    def end(self, results: Mapping[str, Any], artefacts: Sequence[Path]) -> None:
        """The run's ``results.json`` content and its files (figures, the distilled model)."""

    def close(self, status: Status) -> None:
        """Flush and release; called last, also when training was interrupted or failed."""

    def describe(self) -> str | None:
        """One line telling the user where to look (printed when the run starts)."""
        return None


class JsonlLogger(Logger):
    """``metrics.jsonl`` in the run folder: always on, listed or not.

    The training loop writes it itself (``mtkd resume`` reads it back), so this logger is the
    name that stands for it in ``output.loggers``; it does nothing of its own.
    """

    name = "jsonl"


def numeric_items(record: Mapping[str, Any]) -> dict[str, float]:
    """The record's numbers (booleans and the epoch counter left out), as floats."""
    return {
        key: float(value)
        for key, value in record.items()
        if isinstance(value, int | float) and not isinstance(value, bool) and key != "epoch"
    }


def final_metrics(results: Mapping[str, Any]) -> dict[str, float]:
    """``test/<model>/<metric>`` for both models, and verification accuracy per task."""
    out: dict[str, float] = {}
    for model, metrics in (results.get("test") or {}).items():
        if isinstance(metrics, dict):
            out.update({f"test/{model}/{k}": v for k, v in numeric_items(metrics).items()})
    for task, result in (results.get("verification") or {}).items():
        if isinstance(result, dict) and "accuracy_mean" in result:
            out[f"verification/{task}/accuracy"] = float(result["accuracy_mean"])
    return out


def flat_recipe(cfg: DictConfig) -> dict[str, str | int | float | bool]:
    """The recipe as ``{"trainer.lr": 0.001, ...}``: lists and nulls as JSON text."""
    out: dict[str, str | int | float | bool] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        elif isinstance(node, str | int | float | bool):
            out[prefix.rstrip(".")] = node
        else:
            out[prefix.rstrip(".")] = json.dumps(node)

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return out
