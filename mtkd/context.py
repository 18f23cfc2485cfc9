"""What lifecycle hooks see of a training run (``on_train_start``, ``on_step_end``,
``on_epoch_end``, ``on_train_end``): part of the plugin author's contract.

``TrainContext.state`` is a :class:`LoopState`, the training loop's resumable state: one
dataclass saved in, and restored from, every checkpoint's ``state.json`` — one list of
fields, so save and restore cannot drift apart."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import torch
from omegaconf import DictConfig

if TYPE_CHECKING:
    from .weighting import LossWeighting

# The model a context carries. The contract sits below the model stage, so it names only
# ``torch.nn.Module``; mtkd's own loop builds a ``TrainContext[MultiTaskModel]``.
ModelT = TypeVar("ModelT", bound=torch.nn.Module)


@dataclass
class EpochTally:
    """Running loss sums of the current epoch; saved mid-epoch so a resumed epoch logs exactly."""

    seen: int = 0  # samples trained on (for images/s)
    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    # under torchrun, each rank's own sums (mid-epoch checkpoints): a resumed rank goes on
    # from its own, so the epoch's sums are added in the uninterrupted run's order
    rank_sums: list[dict[str, float]] = field(default_factory=list)

    def task_losses(self) -> dict[str, float]:
        """Mean loss per task over its labelled samples (tasks with none are left out)."""
        return {k: self.sums[k] / n for k, n in self.counts.items() if n}


@dataclass
class LoopState:
    """Where training stands. ``epoch``/``step`` say where to continue: a checkpoint taken at
    an epoch's end holds the next epoch and step 0."""

    epoch: int = 0  # 0-based epoch to run (or running)
    step: int = 0  # steps of that epoch already done
    global_step: int = 0  # optimizer steps over the whole run, skipped ones included
    history_len: int = 0  # epochs logged to metrics.jsonl
    best_epoch: int = -1  # 1-based epoch of the best monitored value; -1: none yet
    best_value: float = math.inf
    stale: int = 0  # epochs since the monitored value last improved
    skipped_steps: int = 0  # steps skipped for a non-finite loss
    tally: EpochTally = field(default_factory=EpochTally)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> LoopState:
        """The state a ``state.json`` holds; a key this version does not know (a checkpoint
        of another mtkd version) is a ValueError naming it, never a TypeError."""
        _check_known(raw, cls, "")
        values = dict(raw)
        tally = {k: v for k, v in dict(values.get("tally", {})).items() if k not in RETIRED}
        _check_known(tally, EpochTally, "tally.")
        # state.json is strict JSON: NaN and Inf were written as null
        tally["sums"] = _numbers(tally.get("sums", {}))
        tally["rank_sums"] = [_numbers(sums) for sums in tally.get("rank_sums", [])]
        values["tally"] = EpochTally(**tally)
        if values.get("best_value", math.inf) is None:  # no finite best yet: +Inf
            values["best_value"] = math.inf
        return cls(**values)


# tally keys earlier versions wrote and this one ignores (``total``: the mean of the steps'
# totals, which the one loss rule replaced), so their checkpoints still resume
RETIRED = frozenset({"total"})
# what a checkpoint's state.json must hold to be resumed: LoopState's fields, and only them
RESUME_STATE_KEYS: tuple[str, ...] = tuple(f.name for f in fields(LoopState))


def _numbers(values: dict[str, Any]) -> dict[str, float]:
    """Loss sums read back from strict JSON, where NaN and Inf were written as null."""
    return {k: math.nan if v is None else v for k, v in values.items()}


def _check_known(raw: dict[str, Any], kind: type, prefix: str) -> None:
    unknown = sorted(set(raw) - {f.name for f in fields(kind)})
    if unknown:
        names = ", ".join(f"'{prefix}{key}'" for key in unknown)
        raise ValueError(f"unknown key(s) {names} (written by another version of mtkd?)")


@dataclass
class TrainContext(Generic[ModelT]):
    """The live model, optimizer and recipe, and where training stands.

    ``state`` is exactly what a checkpoint saves and a resume restores; ``epoch``,
    ``best_epoch`` and ``best_value`` read from it. A hook may set ``stop_requested`` to end
    training after the current epoch.
    """

    cfg: DictConfig
    model: ModelT  # a mtkd.MultiTaskModel in mtkd's own loop
    optimizer: torch.optim.Optimizer
    device: torch.device
    run_dir: Path | None
    weighting: LossWeighting | None = None
    rank: int = 0  # this process's rank under torchrun (0 in a single process)
    world_size: int = 1
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per epoch
    state: LoopState = field(default_factory=LoopState)
    stopped_early: bool = False
    stop_requested: bool = False

    @property
    def epoch(self) -> int:
        """The 0-based epoch running (the last one run, once training stopped)."""
        return self.state.epoch

    @property
    def best_epoch(self) -> int:
        """1-based epoch of the best monitored value so far; -1 before the first."""
        return self.state.best_epoch

    @property
    def best_value(self) -> float:
        return self.state.best_value
