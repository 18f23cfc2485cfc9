"""The run folder's layout: every name a run writes, and what state a folder's run is in.

<run>/config.yaml          the merged recipe (rerun it with ``mtkd run <run>/config.yaml``)
<run>/labels.json          the label spaces (class names) the heads were built for
<run>/metrics.jsonl        one line per epoch
<run>/checkpoints/         last/ (weights, optimizer, RNG, state.json), last.previous/ (the one
                           before) and best.safetensors (early stopping's best weights)
<run>/distilled/           model.safetensors + tasks.json: the inference model
<run>/results.json         parameter counts, test metrics before and after distillation;
                           ``"completed": false`` until the figures and loggers are done
SHA256SUMS                 beside every weights file: its checksum, checked when it is loaded

Every module that reads or writes a run folder takes the names from here, and asks
:func:`run_status` (not its own file probes) whether a run finished, crashed or was cut off.
Only the file system and JSON: every stage can import it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

CONFIG = "config.yaml"
LABELS = "labels.json"
METRICS = "metrics.jsonl"
RESULTS = "results.json"
COMPLETED = "completed"  # in results.json: false until the figures and loggers are done too
CHECKPOINTS = "checkpoints"
BEST = "best.safetensors"  # in checkpoints/: the best weights so far
LAST = "last"  # in checkpoints/: the loop's checkpoint
PREVIOUS = ".previous"  # suffix of the checkpoint kept from before the current one
# the files of one checkpoint folder
WEIGHTS = "model.safetensors"
OPTIMIZER = "optimizer.pt"
RNG = "rng.pt"
STATE = "state.json"
DISTILLED = "distilled"  # the inference model: WEIGHTS and TASKS
TASKS = "tasks.json"
EXPORT = "export"
INIT_FROM = "init_from.json"
TRACKING = "tracking.json"  # the last epoch handed to the experiment loggers
MLFLOW_RUN = "mlflow.json"
TENSORBOARD = "tensorboard"
# what a run writes at its top level: what --force removes before a new run takes the folder
RUN_ENTRIES = (
    CONFIG,
    LABELS,
    METRICS,
    RESULTS,
    CHECKPOINTS,
    DISTILLED,
    EXPORT,
    INIT_FROM,
    "curves.png",
    "predictions-*.png",
    "confusion-*.png",
    "accuracy_by_bin-*.png",
    "eval-*.json",
    TENSORBOARD,  # a new run's event files must not continue the old run's
    TRACKING,
    MLFLOW_RUN,  # its MLflow run is tagged replaced first
)

RunStatus = Literal["finished", "crashed", "interrupted", "started"]
WITH_RESULTS: tuple[RunStatus, ...] = ("finished", "crashed")  # results.json to read


def previous_of(directory: Path) -> Path:
    """Where the checkpoint before ``directory``'s current one is kept."""
    return directory.with_name(directory.name + PREVIOUS)


def last_checkpoint(run_dir: Path) -> Path:
    """``<run>/checkpoints/last``: the loop's checkpoint (its predecessor beside it)."""
    return Path(run_dir) / CHECKPOINTS / LAST


def best_weights(run_dir: Path) -> Path:
    """``<run>/checkpoints/best.safetensors``."""
    return Path(run_dir) / CHECKPOINTS / BEST


def distilled_weights(run_dir: Path) -> Path:
    """``<run>/distilled/model.safetensors``: the inference model's weights."""
    return Path(run_dir) / DISTILLED / WEIGHTS


def has_checkpoint(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a loop checkpoint to continue from (``last`` or the one
    before it: a crash between the two renames leaves only the latter)."""
    last = last_checkpoint(run_dir)
    return any((folder / STATE).is_file() for folder in (last, previous_of(last)))


def completed(run_dir: Path) -> bool:
    """Whether the run in ``run_dir`` completed: its ``results.json`` exists and does not say
    ``"completed": false`` (written so until the figures and loggers are done; a run that
    crashed after evaluating keeps it). Results from before the key count as complete."""
    path = Path(run_dir) / RESULTS
    if not path.is_file():
        return False
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return True  # a damaged results file is the reader's to report, not a crash marker
    return not (isinstance(data, dict) and data.get(COMPLETED) is False)


def run_status(path: str | Path) -> RunStatus | None:
    """What the folder ``path`` holds: None (no run), or a run that is

    - ``finished``: results.json, complete;
    - ``crashed``: results.json written, but the figures or loggers did not finish
      (``mtkd resume`` finishes it);
    - ``interrupted``: a checkpoint and no results (``mtkd resume`` continues it);
    - ``started``: some of a run's files, but it stopped before its first checkpoint.
    """
    path = Path(path)
    if (path / RESULTS).exists():
        return "finished" if completed(path) else "crashed"
    if has_checkpoint(path):
        return "interrupted"
    if any((path / name).exists() for name in (METRICS, CHECKPOINTS, CONFIG)):
        return "started"
    return None
