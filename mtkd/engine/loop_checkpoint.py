"""The loop's checkpoint: everything needed to continue exactly where it was taken."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console

from ..context import RESUME_STATE_KEYS, EpochTally, LoopState, TrainContext
from ..errors import MtkdError
from ..model.multitask import MultiTaskModel
from ..utils import distributed, rng
from ..utils.checkpoint import load_checkpoint, save_checkpoint
from ..utils.layout import STATE, last_checkpoint
from .metrics_log import json_line
from .step import TrainStep


class LoopCheckpoint:
    """Saves and restores the model, optimizer, scheduler, weighting, AMP scaler, RNG and
    :class:`LoopState` together, in ``<run>/checkpoints/last``."""

    def __init__(self, ctx: TrainContext[MultiTaskModel], step: TrainStep, scheduler: Any) -> None:
        self.ctx, self.step, self.scheduler = ctx, step, scheduler
        self.saved_history: list[dict[str, Any]] | None = None  # set by restore()

    def save(self, state: LoopState) -> None:
        """Written atomically, by rank 0 only."""
        run_dir = self.ctx.run_dir
        if run_dir is None or not distributed.is_main():
            return
        state.history_len = len(self.ctx.history)
        extra = {
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "weighting": self.step.weighting.state_dict(),
            "scaler": self.step.scaler.state_dict() if self.step.scaler else None,
            # the epochs logged so far, as metrics.jsonl holds them: the log is rebuilt from
            # this copy if it is damaged
            "history": [json.loads(json_line(record)) for record in self.ctx.history],
        }
        ctx = self.ctx
        save_checkpoint(
            last_checkpoint(run_dir),
            ctx.model,
            ctx.optimizer,
            state.to_dict(),
            extra,
            rng.capture(),
        )

    def save_epoch_end(self, state: LoopState) -> None:
        """At an epoch's end the checkpoint points at the next epoch, with an empty tally."""
        self.save(replace(state, epoch=state.epoch + 1, step=0, tally=EpochTally()))

    def restore(self, run_dir: Path, console: Console) -> LoopState:
        """Load the last checkpoint; returns the state to continue from (RNG restored last)."""
        ctx = self.ctx
        last = last_checkpoint(run_dir)
        raw, extra, rng_state, notes = load_checkpoint(
            last, ctx.model, ctx.optimizer, required=RESUME_STATE_KEYS
        )
        for note in notes:
            console.print(f"[yellow]{note}: resuming from the checkpoint before it")
        if self.scheduler is not None and extra.get("scheduler") is not None:
            self.scheduler.load_state_dict(extra["scheduler"])
        if extra.get("weighting"):
            self.step.weighting.load_state_dict(extra["weighting"])
        if self.step.scaler is not None and extra.get("scaler"):
            self.step.scaler.load_state_dict(extra["scaler"])
        history = extra.get("history")
        self.saved_history = list(history) if isinstance(history, list) else None
        try:
            state = LoopState.from_dict(raw)
        except ValueError as exc:
            raise MtkdError(
                f"cannot resume from '{last}': its {STATE} holds {exc}; resume it with the "
                "mtkd version that wrote it, or start the run afresh with --force"
            ) from exc
        state.tally = _this_ranks_tally(state.tally)
        rng.restore(rng_state)
        return state


def _this_ranks_tally(saved: EpochTally) -> EpochTally:
    """Where this rank's running tally goes on from. The saved counts are summed over ranks:
    rank 0 keeps them, the others start at zero. The loss sums are each rank's own where the
    checkpoint has them for this many ranks (so they are added in the uninterrupted run's
    order, bit for bit); else rank 0 keeps the summed ones."""
    ranks, main = distributed.world_size(), distributed.is_main()
    if len(saved.rank_sums) == ranks > 1:
        own = saved.rank_sums[distributed.rank()]
        if main:
            return EpochTally(saved.seen, own, saved.counts)
        return EpochTally(sums=own)
    return saved if main else EpochTally()
