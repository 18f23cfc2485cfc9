"""``mtkd compare`` (and a study's summary): comparison tables from run folders, in the paper's
Table 1 layout plus what mtkd measures.

Runs of the same recipe (different seeds) are aggregated into mean ± sample std. Every number
comes from a run's ``results.json``; nothing is typed in by hand.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ..errors import MtkdError
from ..utils.files import read_json_object
from ..utils.layout import RESULTS


def read_results(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / RESULTS
    if not path.is_file():
        raise MtkdError(f"'{run_dir}' has no {RESULTS}: not a finished run")
    results = read_json_object(path, RESULTS)
    if "recipe" not in results:  # every results.json mtkd writes names its recipe
        raise MtkdError(
            f"'{path}' holds no 'recipe': not the {RESULTS} of a finished mtkd run "
            f"(keys: {', '.join(sorted(results)[:6]) or 'none'})"
        )
    return results


def _dig(results: dict[str, Any], *keys: str) -> Any:
    node: Any = results
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _first_task(results: dict[str, Any], section: str, field: str) -> Any:
    """``results[section][<first task>][field]`` (e.g. the identification task's verification)."""
    tasks = results.get(section) or {}
    return next((t[field] for t in tasks.values() if isinstance(t, dict) and field in t), None)


def _gallery(results: dict[str, Any], field: str) -> Any:
    """``results["gallery"]["tasks"][<first task>][field]``: gallery/probe identification."""
    return _first_task(results.get("gallery") or {}, "tasks", field)


def _latency(results: dict[str, Any], model: str, batch: int) -> float | None:
    rows = _dig(results, "latency", model) or []
    return next((r["median_ms"] for r in rows if r.get("batch") == batch), None)


def _classes_predicted(results: dict[str, Any]) -> float | None:
    """From the test confusion matrix (rows true, columns predicted), so older runs have it."""
    matrices = results.get("confusion") or {}
    matrix = next(iter(matrices.values()), None) if isinstance(matrices, dict) else None
    if not matrix:
        return None
    named = sum(1 for column in zip(*matrix, strict=True) if any(column))
    return named / len(matrix)


@dataclass(frozen=True)
class Column:
    """One table column: a title, how to read it from results.json, and how to show it."""

    title: str
    read: Callable[[dict[str, Any]], float | None]
    fmt: str  # "pct", "params", "ms", "num"


COLUMNS: tuple[Column, ...] = (
    Column("params (training)", lambda r: _dig(r, "params", "training", "trainable"), "params"),
    Column("params (inference)", lambda r: _dig(r, "params", "inference", "trainable"), "params"),
    Column("test accuracy", lambda r: _dig(r, "test", "distilled", "identification/top1"), "pct"),
    Column("top-5", lambda r: _dig(r, "test", "distilled", "identification/top5"), "pct"),
    Column("verification", lambda r: _first_task(r, "verification", "accuracy_mean"), "pct"),
    # evaluate.gallery_where: rank-1 of the probes against per-person gallery templates, and
    # the classifier's top-1 on the same probes beside it
    Column("gallery rank-1", lambda r: _gallery(r, "rank1"), "pct"),
    Column("top-1 on probes", lambda r: _gallery(r, "classifier_top1"), "pct"),
    Column("mIoU (teacher)", lambda r: _dig(r, "test", "full", "segmentation/miou"), "pct"),
    Column("latency b1 (ms)", lambda r: _latency(r, "inference", 1), "ms"),
    # share of live embedding units: 0 % flags a dead head (accuracy at chance for that reason)
    Column(
        "embedding active",
        lambda r: _dig(r, "test", "distilled", "identification/embedding_active"),
        "pct",
    ),
    # share of classes named for some test image: one class for all flags collapsed features
    Column("classes predicted", lambda r: _classes_predicted(r), "pct"),
    Column("epochs", lambda r: _dig(r, "epochs_run"), "num"),
    Column("train img/s", lambda r: _dig(r, "train_images_per_s"), "num"),
)


def _show(values: Sequence[float], fmt: str) -> str:
    if not values:
        return "—"
    mean = statistics.fmean(values)
    # sample standard deviation (n - 1): seeds are a sample of the runs one could have made
    std = statistics.stdev(values) if len(values) > 1 else None
    if fmt == "pct":
        text = f"{100 * mean:.1f}"
        return text + (f" ± {100 * std:.1f}" if std is not None else "") + " %"
    if fmt == "params":
        return f"{mean / 1e6:.2f}M"
    if fmt == "ms":
        return f"{mean:.1f}" + (f" ± {std:.1f}" if std is not None else "")
    return f"{mean:.0f}" if std is None else f"{mean:.1f} ± {std:.1f}"


@dataclass
class ComparisonRow:
    recipe: str
    runs: list[dict[str, Any]]
    failed: int = 0  # runs of this recipe (seeds) that failed: counted, never silently dropped

    def runs_cell(self) -> str:
        return str(len(self.runs)) + (f" ({self.failed} FAILED)" if self.failed else "")

    def cells(self, columns: Sequence[Column]) -> list[str]:
        out = []
        for column in columns:
            values = [v for r in self.runs if (v := column.read(r)) is not None]
            out.append(_show([float(v) for v in values], column.fmt))
        return out


def comparison_rows(
    results: Iterable[dict[str, Any]],
    order: Sequence[str] = (),
    failed: Mapping[str, int] | None = None,
) -> list[ComparisonRow]:
    """One row per recipe (runs of one recipe are its seeds), in ``order`` first; ``failed``
    counts failed runs per recipe (a recipe whose every run failed still gets its row)."""
    failed = failed or {}
    by_recipe: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        by_recipe[str(r["recipe"])].append(r)
    for name in failed:
        by_recipe.setdefault(name, [])
    first = list(dict.fromkeys(n for n in order if n in by_recipe))  # seeds repeat a name
    names = first + sorted(n for n in by_recipe if n not in order)
    return [ComparisonRow(n, by_recipe[n], failed.get(n, 0)) for n in names]


def _used_columns(rows: Sequence[ComparisonRow]) -> list[Column]:
    return [c for c in COLUMNS if any(c.read(r) is not None for row in rows for r in row.runs)]


def rich_table(rows: Sequence[ComparisonRow], title: str) -> Table:
    columns = _used_columns(rows)
    table = Table(title=title)
    table.add_column("network", no_wrap=True)
    table.add_column("runs", justify="right")
    for column in columns:
        table.add_column(column.title, justify="right")
    for row in rows:
        table.add_row(row.recipe, row.runs_cell(), *row.cells(columns))
    return table


def table_cells(rows: Sequence[ComparisonRow]) -> tuple[list[str], list[list[str]]]:
    """(header, one list of cell texts per row): the table any format renders."""
    columns = _used_columns(rows)
    header = ["network", "runs", *(c.title for c in columns)]
    return header, [[row.recipe, row.runs_cell(), *row.cells(columns)] for row in rows]


def markdown_table(rows: Sequence[ComparisonRow]) -> str:
    header, cells = table_cells(rows)
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines) + "\n"


def print_table(console: Console, rows: Sequence[ComparisonRow], title: str) -> None:
    """The table as rich draws it in a terminal; in a log file or pipe, as the Markdown of
    ``table.md``, whole, whatever the console's width (no ``pa…`` cells)."""
    if console.is_terminal:
        console.print(rich_table(rows, title))
        return
    console.print(title, highlight=False, markup=False, soft_wrap=True)
    for line in markdown_table(rows).splitlines():
        console.print(line, highlight=False, markup=False, soft_wrap=True)
