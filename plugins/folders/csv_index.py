"""Reading a CSV index: one row per image, with any of its identity, pose, split and mask.

The header names the columns (any order, case-insensitive): ``image`` (required) and any of
``identity``, ``yaw``, ``pitch``, ``roll``, ``split``, ``mask``. Paths are relative to the
data set's root (or absolute, '/' or '\\' separators). Empty cells mean "not known".
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import mtkd

COLUMNS = ("image", "identity", "yaw", "pitch", "roll", "split", "mask")


@dataclass(frozen=True)
class CsvRow:
    line: int
    cells: dict[str, str]  # the known columns with a non-empty value

    def where(self, path: Path) -> str:
        return f"{path}:{self.line}"


@dataclass(frozen=True)
class CsvIndex:
    path: Path
    columns: frozenset[str]
    rows: list[CsvRow]


def read_csv_index(path: Path, counts: Counter[str]) -> CsvIndex:
    """Parse the CSV; a missing ``image`` column or image cell is an error naming the file."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            table = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise mtkd.DataError(f"{path}: cannot read the CSV index: {exc}") from exc
    if not table:
        raise mtkd.DataError(f"{path}: the CSV index is empty (it needs a header row)")
    header = [h.strip().lower() for h in table[0]]
    if "image" not in header:
        raise mtkd.DataError(
            f"{path}: no 'image' column (header: {', '.join(header) or 'empty'}); "
            f"columns are {', '.join(COLUMNS)}"
        )
    known = {name: i for i, name in enumerate(header) if name in COLUMNS}
    counts["ignored_csv_columns"] += len(header) - len(known)
    rows: list[CsvRow] = []
    seen: dict[str, int] = {}
    for line, values in enumerate(table[1:], start=2):
        if not any(v.strip() for v in values):
            continue
        cells = {
            name: values[i].strip()
            for name, i in known.items()
            if i < len(values) and values[i].strip()
        }
        image = cells.get("image")
        if image is None:
            raise mtkd.DataError(f"{path}:{line}: the 'image' cell is empty")
        if image in seen:
            raise mtkd.DataError(
                f"{path}:{line}: image '{image}' is listed twice (first on line {seen[image]})"
            )
        seen[image] = line
        rows.append(CsvRow(line, cells))
    return CsvIndex(path, frozenset(known), rows)
