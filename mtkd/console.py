"""The console a person reads: rich in a terminal; whole lines in a log file or a pipe.

Long runs write to files (``nohup``, a cluster job), where rich would wrap every line at 80
columns and squeeze a study's table into ``pa…`` cells; there the console prints each line
whole and tables at their full width. Python warnings print as one line, like mtkd's own.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.markup import escape

LOG_WIDTH = 10_000  # wide enough for any table; lines are never wrapped (soft_wrap)


def make_console(stderr: bool = False, **options: Any) -> Console:
    """A Console for stdout (or stderr): as rich makes it in a terminal; in a file or pipe,
    one that never wraps a line and gives a table all the width it needs."""
    console = Console(stderr=stderr, **options)
    if console.is_terminal or "width" in options:
        return console
    return Console(stderr=stderr, width=LOG_WIDTH, soft_wrap=True, **options)


def warning_line(message: Warning | str, category: type[Warning], filename: str) -> str:
    """``warning: <message> (<Category>, <file>)`` on one line."""
    text = " ".join(str(message).split())
    return f"warning: {text} ({category.__name__}, {Path(filename).name})"


@contextmanager
def one_line_warnings(console: Console) -> Iterator[None]:
    """Within the block, Python warnings print as one mtkd-style line on ``console`` instead
    of the file path and source line Python shows."""

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        shown = escape(warning_line(message, category, filename))
        console.print(f"[yellow]{shown}[/yellow]", highlight=False)

    before = warnings.showwarning
    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = before
