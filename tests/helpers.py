"""Helpers shared by several test files (fixtures stay in conftest.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

# A plugin file that kills its own process at one optimizer step (MTKD_TEST_STOP_AT), as a
# crash or `kill -9` would, so tests can check what a resumed run makes of it.
KILLER = """
import os
import signal

import mtkd


@mtkd.hookimpl
def on_step_end(context, step):
    if step == int(os.environ.get("MTKD_TEST_STOP_AT", "0")):
        os.kill(os.getpid(), signal.SIGKILL)
"""


def mtkd_subprocess(*args: str, stop_at: int = 0, launcher: list[str] | None = None) -> str:
    """Run ``python -m mtkd ARGS`` (or ``launcher + ARGS``); returns stdout + stderr.

    With ``stop_at``, a recipe plugin file written by :func:`killer_plugin` kills the process
    at that step, and the kill is what is expected; otherwise the command must succeed."""
    env = {**os.environ, "MTKD_TEST_STOP_AT": str(stop_at), "OMP_NUM_THREADS": "1"}
    command = (launcher or [sys.executable, "-m", "mtkd"]) + list(args)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    expected = -signal.SIGKILL if stop_at else 0
    assert done.returncode == expected, output[-4000:]
    return output


def killer_plugin(folder: Path) -> Path:
    path = folder / "killer.py"
    path.write_text(KILLER)
    return path


Cell = tuple[str, float | None]  # (text, the data-value attribute as a number, if any)


class _TableReader(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[Cell]]] = {}
        self.headers: dict[str, list[str]] = {}
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._value: float | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "table":
            self._table = attributes.get("id") or f"table{len(self.tables)}"
            self.tables[self._table], self.headers[self._table] = [], []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th"):
            self._cell = []
            raw = attributes.get("data-value")
            self._value = float(raw) if raw is not None else None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            text = "".join(self._cell).strip()
            if tag == "th":
                self.headers[self._table].append(text)
            else:
                self.tables[self._table][-1].append((text, self._value))
            self._cell = None
        elif tag == "table":
            rows = self.tables[self._table or ""]
            self.tables[self._table or ""] = [r for r in rows if r]  # drop header-only rows
            self._table = None


def html_tables(text: str) -> tuple[dict[str, list[list[Cell]]], dict[str, list[str]]]:
    """The page's tables by id: body rows of (text, data-value) cells, and the headers."""
    reader = _TableReader()
    reader.feed(text)
    return reader.tables, reader.headers
