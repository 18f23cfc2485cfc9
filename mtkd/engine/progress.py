"""What the console shows while training: a progress bar per epoch and one line per epoch."""

from __future__ import annotations

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
    shown = [f"epoch {record['epoch']}"]
    for key, value in record.items():
        if (
            key.startswith(("train/", "val/"))
            and isinstance(value, float)
            and not key.endswith("/count")
        ):
            shown.append(f"{key} {value:.4f}")
    mark = " [green]*[/green]" if record["best"] else ""
    return "  ".join(shown) + f"  ({record['time_s']:.1f}s){mark}"
