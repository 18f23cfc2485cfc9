"""``mtkd zoo``: list the pretrained encoders the installed plugins ship, and
``mtkd zoo release``: turn a finished run folder into a zoo entry (``release.py``)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ...commands import Command
from ...plugins import PluginSet, load_plugins
from ...pretrained import PretrainedEntry
from ...utils.files import read_json_object
from .release import MB, ReleaseOptions, existing_entry, release_run


def entry_record(entry: PretrainedEntry, plugin: str) -> dict[str, Any]:
    """One entry as JSON data: its card, the absolute file path, and the plugin shipping it."""
    card = entry.to_card()
    card.pop("format")
    return {**card, "file": str(entry.file), "plugin": plugin}


def zoo_records(plugins: PluginSet) -> list[dict[str, Any]]:
    owner = {n: p for p in plugins.origins for n in plugins.pretrained.by_plugin(p)}
    return [entry_record(e, owner.get(e.name, "?")) for e in plugins.pretrained.values()]


def _flatten(values: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``key: value`` lines, nested mappings as ``outer/inner``."""
    lines: list[str] = []
    for key, value in values.items():
        if isinstance(value, Mapping):
            lines.extend(_flatten(value, f"{prefix}{key}/"))
        else:
            shown = f"{value:.4g}" if isinstance(value, float) else str(value)
            lines.append(f"{prefix}{key}: {shown}")
    return lines


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _trained_on(facts: Mapping[str, Any]) -> str:
    """Recipe; data set and training images; epochs, seed and time, one per line."""
    data = facts.get("data") or {}
    dataset = data.get("dataset") or {}
    samples = (data.get("samples") or {}).get("train")
    lines = [str(facts.get("recipe", "?")), str(dataset.get("name", "?"))]
    if samples:
        lines[-1] += f", {samples} training images"
    run = [f"{facts['epochs']} epochs"] if facts.get("epochs") else []
    if facts.get("seed") is not None:
        run.append(f"seed {facts['seed']}")
    if facts.get("train_time_s"):
        run.append(_duration(float(facts["train_time_s"])))
    return "\n".join([*lines, ", ".join(run)] if run else lines)


def zoo_table(entries: list[PretrainedEntry]) -> Table:
    table = Table(title="pretrained encoders (use: encoder.weights=zoo:NAME or init_from=zoo:NAME)")
    for column in ("name", "encoder", "input", "trained on", "results", "file"):
        table.add_column(column, overflow="fold")
    table.add_column("sha256", overflow="fold", max_width=16)
    for entry in entries:
        table.add_row(
            escape(entry.name),
            escape(entry.encoder),
            f"{entry.image_size} px",
            escape(_trained_on(entry.trained_on)),
            escape("\n".join(_flatten(entry.results)) or "—"),
            f"{entry.size / MB:.1f} MB\n" + escape(" + ".join(["encoder", *entry.heads])),
            entry.sha256,
            end_section=True,
        )
    return table


def _list(args: argparse.Namespace, console: Console) -> int:
    plugins = load_plugins(args.plugin or [])
    if args.json:
        print(json.dumps(zoo_records(plugins), indent=2))
        return 0
    entries = plugins.pretrained.values()
    if not entries:
        console.print("no pretrained encoders are installed (see docs/zoo.md)")
        return 0
    console.print(zoo_table(entries))
    return 0


def _read_results(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    return read_json_object(path, "--results:")


def _release(args: argparse.Namespace, console: Console) -> int:
    options = ReleaseOptions(
        heads=args.heads,
        max_mb=args.max_mb,
        zoo_max_mb=args.zoo_max_mb,
        results=_read_results(args.results),
        recipe=args.recipe,
        notes=args.notes,
        force=args.force,
    )
    replaced = existing_entry(args.out, args.name)
    entry = release_run(args.run_dir, args.name, args.out, options)
    if replaced:
        console.print(f"replaced {replaced}", highlight=False)
    console.print(
        f"released zoo entry '{entry.name}': {entry.file} ({entry.size / MB:.2f} MB, "
        f"encoder + {', '.join(entry.heads) or 'no heads'}), card {entry.card}",
        highlight=False,
    )
    for head, size in entry.left_out.items():
        console.print(f"  left out: head '{head}' ({size / MB:.2f} MB)", highlight=False)
    console.print(f"  sha256 {entry.sha256}", highlight=False)
    return 0


class Zoo(Command):
    """``mtkd zoo [--json]`` and ``mtkd zoo release RUN_DIR --name NAME --out DIR``."""

    name = "zoo"
    help = "list the pretrained encoders (model zoo); release one"
    description = ""

    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--json", action="store_true", help="a JSON list instead of a table")
        parser.add_argument("--plugin", action="append", help="also load this module or .py file")
        _add_release_parser(parser.add_subparsers(dest="zoo_command", metavar="{release}"))

    def run(self, args: argparse.Namespace, console: Console) -> int:
        if args.zoo_command == "release":
            return _release(args, console)
        return _list(args, console)


def _add_release_parser(actions: Any) -> None:
    p_rel = actions.add_parser("release", help="turn a finished run folder into a zoo entry")
    p_rel.add_argument("run_dir", type=Path, help="a finished run folder")
    p_rel.add_argument("--name", required=True, help="the entry's name (zoo:NAME)")
    p_rel.add_argument("--out", type=Path, required=True, help="the zoo folder, e.g. plugins/zoo")
    p_rel.add_argument(
        "--heads",
        nargs="*",
        help="ship exactly these heads (default: all that fit, smallest first)",
    )
    p_rel.add_argument("--max-mb", type=float, default=10.0, help="largest file (MB, 10^6 bytes)")
    p_rel.add_argument(
        "--zoo-max-mb", type=float, default=25.0, help="all weights files in --out together (MB)"
    )
    p_rel.add_argument("--results", type=Path, help="a JSON object of measured transfer results")
    p_rel.add_argument("--recipe", help="the recipe that reproduces it (default recipes/zoo/…)")
    p_rel.add_argument("--notes", default="", help="a note for the card")
    p_rel.add_argument(
        "--force", action="store_true", help="replace an entry of the same name in --out"
    )
