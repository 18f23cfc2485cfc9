"""``mtkd report``: one self-contained HTML page for a run or a study folder.

Everything is inside the one file (figures as base64 PNG, the style inline, no script), so
the page opens offline and can be attached to a message. Every number comes from
``results.json`` (and ``metrics.jsonl``); a numeric cell carries the exact value in a
``data-value`` attribute so tools and tests can read the page back.
"""

from __future__ import annotations

import base64
import importlib.metadata
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from ..data.cache import DataReport
from ..engine.metrics_log import damage_note, read_metrics
from ..errors import MtkdError
from ..loggers import numeric_items
from ..utils.layout import CONFIG, METRICS, RESULTS, WITH_RESULTS, run_status
from .compare import comparison_rows, read_results, table_cells

PAGE = "report.html"
TEMPLATE = "report_page.html.j2"
FIGURE_ORDER = ("curves", "predictions", "confusion", "accuracy_by_bin")


@dataclass(frozen=True)
class Cell:
    text: str
    value: float | None = None  # the exact number behind ``text``, if it is one


@dataclass
class Table:
    id: str
    title: str
    header: list[str]
    rows: list[list[Cell]] = field(default_factory=list)

    def add(self, *cells: Cell | str) -> None:
        self.rows.append([c if isinstance(c, Cell) else Cell(c) for c in cells])


@dataclass(frozen=True)
class Figure:
    title: str
    uri: str  # data:image/png;base64,...


@dataclass
class Section:
    """A run's part of a page: its tables and figures (a study has one per member)."""

    title: str
    folder: str
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    recipe: str | None = None
    note: str | None = None


def number(value: Any, fmt: str = ".4f") -> Cell:
    """A numeric cell (whole numbers shown whole); anything else as text, None as a dash."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return Cell("—" if value is None else str(value))
    if isinstance(value, int) and fmt == ".4f":
        fmt = ",d"
    return Cell(format(value, fmt), float(value))


def png(path: Path) -> Figure:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return Figure(path.stem.replace("-", ": ", 1), f"data:image/png;base64,{data}")


def figures_in(folder: Path, only: Sequence[str] = FIGURE_ORDER) -> list[Figure]:
    """The folder's PNG figures, curves first (others after, in name order)."""

    def rank(path: Path) -> tuple[int, str]:
        kind = path.stem.split("-", 1)[0]
        return (only.index(kind) if kind in only else len(only), path.name)

    return [png(p) for p in sorted(folder.glob("*.png"), key=rank)]


# --- a run ---------------------------------------------------------------------------------


def summary_table(results: Mapping[str, Any]) -> Table:
    table = Table("summary", "Run", ["", ""])
    table.add("recipe", str(results.get("recipe")))
    table.add("seed", number(results.get("seed"), "d"))
    table.add("epochs run", number(results.get("epochs_run"), "d"))
    table.add("best epoch", number(results.get("best_epoch"), "d"))
    table.add("stopped early", str(results.get("stopped_early")))
    table.add("training time (s)", number(results.get("train_time_s"), ".1f"))
    table.add("training images / s", number(results.get("train_images_per_s"), ".1f"))
    table.add("teacher tasks removed", ", ".join(results.get("removed_tasks") or []) or "none")
    return table


def test_table(results: Mapping[str, Any], id: str = "test") -> Table:
    """Every numeric test metric of the full and the inference (distilled) model."""
    test = results.get("test") or {}
    full, distilled = test.get("full") or {}, test.get("distilled") or {}
    table = Table(id, "Test metrics", ["metric", "full model", "inference model"])
    for key in dict.fromkeys([*numeric_items(full), *numeric_items(distilled)]):
        table.add(key, number(full.get(key)), number(distilled.get(key)))
    return table


def params_table(results: Mapping[str, Any]) -> Table:
    params = results.get("params") or {}
    table = Table("params", "Parameters", ["count", "training model", "inference model"])
    training, inference = params.get("training") or {}, params.get("inference") or {}
    for kind in training:
        table.add(kind, number(training.get(kind), ",d"), number(inference.get(kind), ",d"))
    return table


def verification_table(results: Mapping[str, Any]) -> Table:
    table = Table("verification", "Verification", ["task", "accuracy", "std", "pairs", "split"])
    for task, result in (results.get("verification") or {}).items():
        if "accuracy_mean" in result:
            table.add(
                task,
                number(result["accuracy_mean"]),
                number(result.get("accuracy_std")),
                number(result.get("n_pairs"), "d"),
                str(result.get("on", "")),
            )
        else:
            table.add(task, Cell(f"skipped: {result.get('skipped', '')}"), "", "", "")
    return table


def latency_table(results: Mapping[str, Any]) -> Table:
    table = Table("latency", "Latency", ["model", "batch", "median ms", "images / s", "device"])
    for model, rows in (results.get("latency") or {}).items():
        for row in rows:
            table.add(
                model,
                number(row.get("batch"), "d"),
                number(row.get("median_ms"), ".2f"),
                number(row.get("images_per_s"), ".1f"),
                str(row.get("device", "")),
            )
    return table


def data_table(results: Mapping[str, Any]) -> Table:
    table = Table("data", "Data", ["", ""])
    for split, size in (results.get("data") or {}).items():
        table.add(f"{split} samples", number(size, "d"))
    raw = results.get("data_report")
    if raw:
        for line in DataReport(**raw).lines():
            table.add("report", line.strip())
    return table


def versions_table(results: Mapping[str, Any]) -> Table:
    table = Table("versions", "Versions", ["package", "version"])
    for name, version in (results.get("versions") or {}).items():
        table.add(name, str(version))
    return table


def epochs_table(run_dir: Path) -> Table:
    """metrics.jsonl: one row per epoch, one column per logged number (damaged lines left
    out; :func:`log_note` says so)."""
    records, _ = read_metrics(run_dir / METRICS)
    keys = list(dict.fromkeys(k for r in records for k in numeric_items(r)))
    keys = [k for k in keys if not k.endswith("/count")]
    table = Table("epochs", "Every epoch (metrics.jsonl)", ["epoch", *keys])
    for record in records:
        table.add(number(record.get("epoch"), "d"), *(number(record.get(k)) for k in keys))
    return table


def log_note(run_dir: Path) -> str | None:
    """A line saying the epoch log is damaged, when it is."""
    path = run_dir / METRICS
    _, damaged = read_metrics(path)
    return damage_note(path, damaged) if damaged else None


def run_section(run_dir: Path, results: Mapping[str, Any]) -> Section:
    tables = [
        summary_table(results),
        test_table(results),
        params_table(results),
        verification_table(results),
        latency_table(results),
        data_table(results),
        versions_table(results),
        epochs_table(run_dir),
    ]
    config = run_dir / CONFIG
    return Section(
        title=str(results.get("recipe", run_dir.name)),
        folder=str(run_dir),
        tables=[t for t in tables if t.rows],
        figures=figures_in(run_dir),
        recipe=config.read_text() if config.is_file() else None,
        note=log_note(run_dir),
    )


# --- a study -------------------------------------------------------------------------------


def study_runs(folder: Path) -> tuple[str, list[Path]]:
    """(study name, its run folders): from study.json, else the sub-folders holding a run,
    finished or not (an unfinished member is shown as such, never silently left out)."""
    summary = folder / "study.json"
    if summary.is_file():
        data = json.loads(summary.read_text())
        runs = [folder / Path(r).name for r in data.get("runs", [])]
        return str(data.get("study", folder.name)), runs
    runs = sorted(p for p in folder.iterdir() if p.is_dir() and run_status(p))
    if not runs:
        state = run_status(folder)
        if state in ("interrupted", "started"):
            how = (
                f"continue it with `mtkd resume {folder}`"
                if state == "interrupted"
                else "it stopped before its first checkpoint; run it again"
            )
            raise MtkdError(
                f"'{folder}' is an unfinished run (no {RESULTS} yet): {how}, then report it"
            )
        raise MtkdError(
            f"'{folder}' is neither a run folder (no {RESULTS}) nor a study folder "
            "(no study.json, no runs inside)"
        )
    return folder.name, runs


def unfinished_note(run_dir: Path) -> str:
    """Why a study member has no results yet, and what to do about it."""
    state = run_status(run_dir)
    if state == "interrupted":
        return f"unfinished: interrupted, no {RESULTS} (continue it with `mtkd resume {run_dir}`)"
    if state == "started":
        return f"unfinished: stopped before its first checkpoint, no {RESULTS}"
    return f"unfinished: never started or failed, no {RESULTS}"


def comparison_table(results: Iterable[Mapping[str, Any]], order: Sequence[str]) -> Table:
    header, rows = table_cells(comparison_rows([dict(r) for r in results], order))
    table = Table("comparison", "Comparison (mean ± std over seeds)", header)
    for row in rows:
        table.add(*row)
    return table


def failures(folder: Path) -> dict[str, str]:
    """{run folder name: error} of the members the study recorded as failed."""
    summary = folder / "study.json"
    if not summary.is_file():
        return {}
    failed = json.loads(summary.read_text()).get("failed") or {}
    return {Path(run).name: str(message) for run, message in failed.items()}


def member_section(run_dir: Path, failure: str | None = None) -> Section:
    status = run_status(run_dir)
    if status not in WITH_RESULTS:
        note = f"failed: {failure}" if failure else unfinished_note(run_dir)
        return Section(run_dir.name, str(run_dir), note=note)
    if status == "crashed":
        why = f" ({failure})" if failure else " (its figures or loggers did not finish)"
        crashed = f"crashed after writing results.json{why}; run the study again to finish it"
        return Section(run_dir.name, str(run_dir), note=crashed)
    results = read_results(run_dir)
    curves = [f for f in figures_in(run_dir, ("curves",)) if f.title == "curves"]
    tables = [test_table(results, id=f"test-{run_dir.name}")]
    return Section(run_dir.name, str(run_dir), tables=tables, figures=curves)


# --- the page ------------------------------------------------------------------------------


def _render(**context: Any) -> str:
    source = Path(__file__).with_name(TEMPLATE).read_text(encoding="utf-8")
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    return env.from_string(source).render(**context)


def _versions() -> str:
    return f"mtkd {importlib.metadata.version('mtkd')}, written {time.strftime('%Y-%m-%d %H:%M')}"


def run_page(run_dir: Path) -> str:
    section = run_section(run_dir, read_results(run_dir))
    return _render(title=f"Run {section.title}", sections=[section], made=_versions())


def study_page(folder: Path) -> str:
    name, runs = study_runs(folder)
    finished = [r for r in runs if run_status(r) == "finished"]
    results = [read_results(r) for r in finished]
    members = list(dict.fromkeys(str(r.get("recipe")) for r in results))
    overview = Section(
        title="Overview",
        folder=str(folder),
        tables=[comparison_table(results, members)],
        figures=figures_in(folder, ("accuracy_by_bin",)),
        note=f"{len(finished)} of {len(runs)} runs finished"
        + "".join(f"; {r.name} {note}" for r, note in unfinished_members(folder)),
    )
    failed = failures(folder)
    sections = [overview, *(member_section(r, failed.get(r.name)) for r in runs)]
    return _render(title=f"Study {name}", sections=sections, made=_versions())


def unfinished_members(folder: str | Path) -> list[tuple[Path, str]]:
    """(run folder, note) of each study member without results (none for a run folder)."""
    folder = Path(folder)
    if run_status(folder) in WITH_RESULTS:
        return []
    failed = failures(folder)
    return [
        (r, f"failed: {failed[r.name]}" if r.name in failed else unfinished_note(r))
        for r in study_runs(folder)[1]
        if run_status(r) not in WITH_RESULTS
    ]


def write_report(folder: str | Path) -> Path:
    """Write ``report.html`` into a run folder or a study folder; returns its path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MtkdError(f"'{folder}' is not a folder (give a run folder or a study folder)")
    page = run_page(folder) if run_status(folder) in WITH_RESULTS else study_page(folder)
    out = folder / PAGE
    out.write_text(page, encoding="utf-8")
    return out
