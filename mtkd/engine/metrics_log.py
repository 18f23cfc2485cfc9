"""``metrics.jsonl``: one JSON line per epoch, appended by rank 0, cut back atomically when a
run resumes from a checkpoint older than its last logged epoch."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import MtkdError
from ..utils import distributed

NON_FINITE = "non_finite"  # the keys whose values were NaN/Inf, written as null


def json_line(record: dict[str, Any]) -> str:
    """The record as strict JSON: NaN and Inf are not JSON, so they become ``null`` and their
    keys are listed under ``non_finite`` (a reader can tell "not finite" from "not logged")."""
    bad = [k for k, v in record.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        record = {k: (None if k in bad else v) for k, v in record.items()}
        record[NON_FINITE] = bad
    return json.dumps(record, allow_nan=False)


def parse_lines(lines: Sequence[str]) -> tuple[list[dict[str, Any]], list[int]]:
    """(the records that parse, the 1-based numbers of the lines that do not): a log cut
    mid-line by a full disk or a crash, or overwritten with garbage, is still read up to the
    damage."""
    records: list[dict[str, Any]] = []
    damaged: list[int] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        else:
            damaged.append(number)
    return records, damaged


def read_metrics(path: Path) -> tuple[list[dict[str, Any]], list[int]]:
    """``metrics.jsonl``'s readable records and its damaged line numbers (none if absent)."""
    try:
        text = Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return [], []
    return parse_lines(text.splitlines())


def damage_note(path: Path, damaged: Sequence[int]) -> str:
    """One line saying which lines of the log could not be read."""
    shown = ", ".join(map(str, damaged[:5])) + (", ..." if len(damaged) > 5 else "")
    s = "s" if len(damaged) > 1 else ""
    return f"'{path}' is damaged: line{s} {shown} not readable JSON, left out"


class MetricsLog:
    def __init__(self, path: Path | None) -> None:
        self.path = path if distributed.is_main() else None  # only rank 0 writes
        self._read_from = path

    def append(self, record: dict[str, Any]) -> None:
        if self.path is not None:
            with self.path.open("a") as fh:
                fh.write(json_line(record) + "\n")

    def keep_first(
        self, n: int, saved: Sequence[dict[str, Any]] | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """The first ``n`` records, and a note when the log was damaged; the file is cut to
        them (epochs after the checkpoint go).

        A log whose first ``n`` lines do not all parse (cut mid-line, garbage) is rebuilt from
        ``saved``, the checkpoint's own copy of the history; without one (a checkpoint from
        before it kept a copy) the resume stops with one line."""
        path = self._read_from
        lines = path.read_text(errors="replace").splitlines() if path and path.is_file() else []
        records, damaged = parse_lines(lines[:n])
        note, text = None, "".join(line + "\n" for line in lines[:n])
        if damaged or len(records) < n:
            if saved is None or len(saved) < n:
                where = (
                    damage_note(Path(str(path)), damaged) if damaged else f"'{path}' lacks epochs"
                )
                raise MtkdError(
                    f"cannot resume: {where} (the checkpoint holds {n} epochs) and the checkpoint "
                    "keeps no copy of them; start the run afresh with --force"
                )
            records = [dict(r) for r in saved[:n]]
            why = damage_note(Path(str(path)), damaged) if damaged else f"'{path}' lacked epochs"
            note = f"{why}: rewritten from the checkpoint's copy of the {n} epochs"
            text = "".join(json_line(r) + "\n" for r in records)
        distributed.barrier()  # every rank has read the log before rank 0 rewrites it
        if self.path is not None:
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(text)
            os.replace(tmp, self.path)  # a crash leaves the old log or the new, never half
        return records, note
