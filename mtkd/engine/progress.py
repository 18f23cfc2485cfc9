"""What the console shows while training: a progress bar per epoch and one line per epoch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def epoch_progress(console: Console, enabled: bool) -> Progress:
    """Rich progress bars that fall back to nothing when disabled."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
        console=console,
        disable=not enabled,
        transient=True,
    )


def epoch_line(record: dict[str, Any]) -> str:
    """Every logged training and validation figure of an epoch (``trainer.console: full``)."""
    shown = [f"epoch {record['epoch']}"]
    for key, value in record.items():
        if (
            key.startswith(("train/", "val/"))
            and isinstance(value, float)
            and not key.endswith("/count")
        ):
            shown.append(f"{key} {value:.4f}")
    return "  ".join(shown) + _ending(record)


def compact_epoch_line(record: dict[str, Any], shown: Mapping[str, Sequence[str]]) -> str:
    """Each task's training / validation loss and its key validation metrics, on one line.

    ``shown`` maps each task key to the metric names its plugin lists in
    ``Task.console_metrics``; a figure the epoch did not log is left out."""
    parts = [f"epoch {record['epoch']}"]
    for task, metrics in shown.items():
        losses = [record.get(f"{split}/{task}/loss") for split in ("train", "val")]
        logged = [_number(v) for v in losses if v is not None]
        figures = ["loss " + " / ".join(logged)] if logged else []
        for metric in metrics:
            value = record.get(f"val/{task}/{metric}")
            if value is not None:
                figures.append(f"{metric} {_number(value)}")
        parts.append(f"[bold]{task}[/bold] " + ("  ".join(figures) or "—"))
    return " │ ".join(parts) + _ending(record)


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


COMPACT_LEGEND = (
    "[dim]after each epoch: each task's training / validation loss and its key validation "
    "figures; trainer.console=full prints every figure (all are in metrics.jsonl)[/dim]"
)


def _ending(record: dict[str, Any]) -> str:
    mark = " [green]*[/green]" if record["best"] else ""
    return f"  ({record['time_s']:.1f}s){mark}"
