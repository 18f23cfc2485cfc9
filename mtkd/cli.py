"""The mtkd command: run recipes, export and query their models, list plugins and pretrained
encoders, and the commands plugins add."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .commands import Command
from .config import load_recipe
from .console import make_console, one_line_warnings
from .errors import Interrupted, MtkdError
from .hookspecs import hookimpl
from .model.zoo.cli import Zoo
from .plugins import PluginSet, load_plugins
from .recipe_files import find_recipe, shipped_dir, shipped_recipes

if TYPE_CHECKING:
    from .runs.pipeline import RunResult


def _is_overlay(item: str) -> bool:
    """A YAML file or a profile's name (``tiny``); ``trainer.max_epochs`` (no ``=``) is a
    malformed override, reported as one."""
    return "=" not in item and (item.endswith((".yaml", ".yml")) or "." not in item)


def _split_run_args(items: Sequence[str]) -> tuple[list[str], list[str]]:
    """YAML overlays (files, or profile names like ``tiny``) and ``key=value`` overrides, in
    the order given."""
    overlays = [i for i in items if _is_overlay(i)]
    overrides = [i for i in items if i not in overlays]
    return overlays, overrides


def _report_run(result: RunResult, console: Console) -> None:
    """The test results and the run folder (rank 0 alone reports under torchrun)."""
    if not result.results:  # another rank than 0: it trained, rank 0 evaluated
        return
    _print_summary(result.results, console)
    console.print(f"run folder: {result.run_dir}")


def _print_summary(results: dict, console: Console) -> None:
    """Test metrics and parameter counts per model, then verification and latency."""
    table = Table(title=f"{results['recipe']}: test results")
    table.add_column("metric")
    table.add_column("full model", justify="right")
    table.add_column("inference model", justify="right")
    test = results.get("test") or {}
    full, distilled = test.get("full", {}), test.get("distilled", {})
    for key, value in full.items():
        if isinstance(value, float) and key != "loss":  # the weighted sum differs by model
            other = distilled.get(key)
            table.add_row(key, f"{value:.4f}", f"{other:.4f}" if isinstance(other, float) else "—")
    params: dict = results.get("params") or {}
    for kind in ("trainable", "keras") if params else ():
        table.add_row(
            f"parameters ({kind})",
            f"{params['training'][kind]:,}",
            f"{params['inference'][kind]:,}",
        )
    for batch in (1, 32):
        rows = [
            next((r for r in results.get("latency", {}).get(m, []) if r["batch"] == batch), None)
            for m in ("full", "inference")
        ]
        if all(rows):
            shown = [f"{r['median_ms']:.1f}" for r in rows if r]
            table.add_row(f"latency batch {batch} (ms)", *shown)
    if table.row_count:
        console.print(table)
    _print_gallery(results.get("gallery") or {}, console)
    for key, result in (results.get("verification") or {}).items():
        if "accuracy_mean" in result:
            console.print(
                f"verification ({key}, {result['n_pairs']} pairs on the {result['on']} split): "
                f"{100 * result['accuracy_mean']:.1f} ± {100 * result['accuracy_std']:.1f} %"
            )
        else:
            console.print(f"verification ({key}): skipped: {result.get('skipped')}")


def _print_gallery(gallery: dict, console: Console) -> None:
    """Gallery/probe rank-1 per task, or the warning that no gallery image was selected."""
    if gallery.get("warning"):
        console.print(f"[yellow]gallery: {escape(gallery['warning'])}[/yellow]", highlight=False)
    for key, section in (gallery.get("tasks") or {}).items():
        if isinstance(section.get("rank1"), float):
            console.print(
                f"gallery rank-1 ({key}, gallery {gallery.get('where')}, "
                f"{section.get('probes')} probes): {100 * section['rank1']:.1f} %",
                highlight=False,
            )


def _add_trust_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trust-plugins",
        action="store_true",
        help="also load the plugin files and modules the run folder's config.yaml names "
        "(they are code: only for run folders you trust; or set MTKD_TRUST_PLUGINS=1)",
    )


def _add_run_folder(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a run folder (runs/<recipe>-<timestamp>)")


class Run(Command):
    name = "run"
    help = "train, distil and evaluate a recipe; writes a run folder"
    description = ""

    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "recipe",
            help="recipe or study: a YAML file or a name (the working directory's, then mtkd's "
            "shipped ones: mtkd recipes), e.g. seg_distilled_id",
        )
        parser.add_argument(
            "overrides",
            nargs="*",
            help="YAML overlays (a file, or a profile's name: tiny, cpu_quick) and key=value "
            "overrides, e.g. trainer.max_epochs=3",
        )
        parser.add_argument("--out", help="run folder (default: runs/<recipe>-<timestamp>)")
        parser.add_argument(
            "--force",
            action="store_true",
            help="start afresh in a run folder that holds another run (deletes that run's files)",
        )

    def run(self, args: argparse.Namespace, console: Console) -> int:
        from .runs.pipeline import run
        from .runs.study import is_study, run_study

        overlays, overrides = _split_run_args(args.overrides)
        recipe = find_recipe(
            args.recipe
        )  # a file, or a name: the working directory's, then shipped
        if is_study(recipe):
            if args.out:
                overrides.append(f"study.dir={args.out}")
            run_study(recipe, overrides, overlays, console=console)
            return 0
        cfg = load_recipe(recipe, overrides, overlays)
        if args.out:
            cfg.output.dir = args.out
        _report_run(run(cfg, console=console, force=args.force), console)
        return 0


class Resume(Command):
    name = "resume"
    help = "continue an interrupted run from its checkpoint"
    description = ""

    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("run_dir", type=Path, help="the run folder")
        parser.add_argument(
            "overrides",
            nargs="*",
            help="key=value overrides of when to stop or how to report, e.g. "
            "trainer.max_epochs=200 (changes to the data, model or optimizer are refused)",
        )

    def run(self, args: argparse.Namespace, console: Console) -> int:
        from .runs.pipeline import run
        from .runs.resume import resume_recipe

        overlays, overrides = _split_run_args(args.overrides)
        cfg = resume_recipe(args.run_dir, overrides, overlays)
        _report_run(run(cfg, console=console, resume_dir=args.run_dir), console)
        return 0


class Eval(Command):
    name = "eval"
    help = "evaluate a saved run again, also on other data"
    description = ""

    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("run_dir", type=Path, help="a run folder")
        parser.add_argument(
            "overrides",
            nargs="*",
            help="overlays and key=value overrides, e.g. data.dataset.name=…",
        )
        _add_trust_flag(parser)

    def run(self, args: argparse.Namespace, console: Console) -> int:
        from .runs.eval_run import evaluate_run

        overlays, overrides = _split_run_args(args.overrides)
        results = evaluate_run(
            args.run_dir,
            overrides,
            list(overlays),
            console=console,
            trust_plugins=args.trust_plugins,
        )
        _print_summary({"recipe": str(args.run_dir), **results}, console)
        return 0


class Compare(Command):
    name = "compare"
    help = "compare finished runs in one table"
    description = ""

    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("run_dirs", nargs="+", type=Path, help="run folders")
        parser.add_argument("--markdown", type=Path, help="also write the table as Markdown")

    def run(self, args: argparse.Namespace, console: Console) -> int:
        from .runs.compare import comparison_rows, markdown_table, print_table, read_results

        rows = comparison_rows([read_results(d) for d in args.run_dirs])
        print_table(console, rows, "comparison")
        if args.markdown:
            args.markdown.write_text(markdown_table(rows))
            console.print(f"markdown table: {args.markdown}")
        return 0


class Report(Command):
    name = "report"
    help = "write report.html: one self-contained page for a run or a study"
    description = ""

    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("folder", type=Path, help="a run folder or a study folder")

    def run(self, args: argparse.Namespace, console: Console) -> int:
        from .runs.report import log_note, unfinished_members, write_report

        page = write_report(args.folder)
        for run_dir, note in unfinished_members(args.folder):
            console.print(
                f"[yellow]{escape(run_dir.name)}: {escape(note)}[/yellow]", highlight=False
            )
        damaged = log_note(Path(args.folder))  # the page says it too
        if damaged:
            console.print(f"[yellow]warning: {escape(damaged)}", highlight=False)
        console.print(f"report: {page}")
        return 0


class Recipes(Command):
    name = "recipes"
    help = "list the recipes, studies and profiles installed with mtkd"
    description = ""

    def run(self, args: argparse.Namespace, console: Console) -> int:
        """The recipes, studies and profiles installed with mtkd, one line each."""
        rows = shipped_recipes()
        width = max(len(name) for name, _, _ in rows)
        for name, kind, line in rows:
            console.print(
                f"[bold]{name:<{width}}[/bold]  [dim]{kind:<7}[/dim]  {escape(line)}",
                highlight=False,
                no_wrap=True,
                overflow="ellipsis",
            )
        console.print(
            f"[dim]in {shipped_dir()}; run one by name: mtkd run seg_distilled_id tiny[/dim]",
            highlight=False,
        )
        return 0


class Plugins(Command):
    name = "plugins"
    help = "list loaded plugins and what each registered"
    description = ""

    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--plugin", action="append", help="also load this module or .py file")

    def run(self, args: argparse.Namespace, console: Console) -> int:
        plugins = load_plugins(args.plugin or [])
        for name, origin in plugins.origins.items():
            console.print(f"[bold]{name}[/bold]  [dim]({origin})[/dim]", highlight=False)
            registered = {
                "tasks": plugins.tasks.by_plugin(name),
                "data sets": plugins.datasets.by_plugin(name),
                "preprocessors": plugins.preprocessors.by_plugin(name),
                "commands": plugins.commands.by_plugin(name),
                "loss weightings": plugins.weightings.by_plugin(name),
                "pretrained encoders": plugins.pretrained.by_plugin(name),
                "loggers": plugins.loggers.by_plugin(name),
                "teacher networks": plugins.teachers.by_plugin(name),
                "hooks": plugins.hooks_of(name),
            }
            for label, names in registered.items():
                if names:
                    console.print(f"  {label}: {', '.join(names)}", highlight=False)
        return 0


class Export(Command):
    name = "export"
    help = "export a run's inference model (ONNX, TorchScript, safetensors)"
    description = ""

    def configure(self, parser: argparse.ArgumentParser) -> None:
        from .deploy.export import FORMATS

        _add_run_folder(parser)
        parser.add_argument("--format", required=True, choices=list(FORMATS))
        parser.add_argument("--out", help="output file (default: <run>/export/model.<ext>)")
        parser.add_argument(
            "--no-flip-embedding",
            dest="flip_embedding",
            action="store_false",
            help="leave out <task>.flip_embedding (mtkd embed's vectors; costs a second "
            "forward pass on the mirrored image)",
        )
        _add_trust_flag(parser)

    def run(self, args: argparse.Namespace, console: Console) -> int:
        from .deploy.export import export_run

        export_run(
            args.run_dir,
            args.format,
            args.out,
            console=console,
            trust_plugins=args.trust_plugins,
            flip_embedding=args.flip_embedding,
        )
        return 0


def _add_image_query(parser: argparse.ArgumentParser) -> None:
    """What ``embed`` and ``predict`` share: a run folder, image files, the task to ask."""
    _add_run_folder(parser)
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--task", default="identification", help="the identification task")
    _add_trust_flag(parser)


class Embed(Command):
    name = "embed"
    help = "L2-normalised identity embeddings of image files"
    description = ""

    def configure(self, parser: argparse.ArgumentParser) -> None:
        _add_image_query(parser)
        parser.add_argument("--out", help="save an (N, D) float32 array to this .npy file")
        parser.add_argument("--no-flip", action="store_true", help="skip the mirror average")

    def run(self, args: argparse.Namespace, console: Console) -> int:
        import numpy as np

        from .deploy.inference import Predictor

        predictor = Predictor(args.run_dir, task=args.task, trust_plugins=args.trust_plugins)
        embeddings = predictor.embed(args.images, flip=not args.no_flip)
        if args.out:
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            np.save(out, embeddings)
            console.print(f"saved {embeddings.shape[0]} x {embeddings.shape[1]} embeddings: {out}")
            return 0
        for path, row in zip(args.images, embeddings, strict=True):
            head = " ".join(f"{v:+.3f}" for v in row[:4])
            console.print(
                f"{path}: {row.shape[0]}-d, norm {np.linalg.norm(row):.3f}, [{head} …]",
                highlight=False,
            )
        return 0


class Predict(Command):
    name = "predict"
    help = "the most probable identities of image files"
    description = ""

    def configure(self, parser: argparse.ArgumentParser) -> None:
        _add_image_query(parser)
        parser.add_argument("--top-k", type=int, default=5, help="identities per image")

    def run(self, args: argparse.Namespace, console: Console) -> int:
        from .deploy.inference import Predictor

        predictor = Predictor(args.run_dir, task=args.task, trust_plugins=args.trust_plugins)
        predictions = predictor.predict(args.images, top_k=args.top_k)
        name = predictor.run_dir.resolve().name
        if predictor.kind == "vector":  # a regression: one column per named component
            table = Table(title=f"{name}: {predictor.task}")
            table.add_column("image", overflow="fold")
            for component in predictor.names:
                table.add_column(component, justify="right")
            for path, values in zip(args.images, predictions, strict=True):
                table.add_row(str(path), *(f"{v:.4g}" for _, v in values))
            console.print(table)
            return 0
        table = Table(title=f"{name}: top {args.top_k} identities")
        table.add_column("image", overflow="fold")
        table.add_column("identity")
        table.add_column("probability", justify="right")
        for path, ranked in zip(args.images, predictions, strict=True):
            names = "\n".join(name for name, _ in ranked)
            probs = "\n".join(f"{p:.3f}" for _, p in ranked)
            table.add_row(str(path), names, probs, end_section=True)
        console.print(table)
        return 0


# mtkd's own subcommands, in the order ``mtkd --help`` lists them; registered below through
# ``register_commands`` like any plugin's (mtkd.plugins loads this module as a core plugin)
BUILT_IN: tuple[type[Command], ...] = (
    Run,
    Resume,
    Eval,
    Compare,
    Report,
    Recipes,
    Plugins,
    Export,
    Embed,
    Predict,
    Zoo,
)


@hookimpl
def register_commands(register: Callable[[type[Command]], None]) -> None:
    """The built-in subcommands."""
    for command in BUILT_IN:
        register(command)


def build_parser(plugins: PluginSet | None = None) -> argparse.ArgumentParser:
    """Every registered subcommand, the built-in ones first in their order (``plugins``
    None: the built-in ones alone)."""
    parser = argparse.ArgumentParser(prog="mtkd", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    registered = plugins.commands.values() if plugins is not None else []
    for command_cls in [*BUILT_IN, *(c for c in registered if c not in BUILT_IN)]:
        command = command_cls()
        description = command.help if command.description is None else command.description
        p_cmd = sub.add_parser(command.name, help=command.help, description=description or None)
        command.configure(p_cmd)
        p_cmd.set_defaults(func=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    console, errors = make_console(), make_console(stderr=True)
    try:
        with one_line_warnings(errors):
            args = build_parser(load_plugins()).parse_args(argv)
            return int(args.func(args, console))
    except Interrupted as exc:
        errors.print(f"[yellow]{exc}[/yellow]", highlight=False)
        return 143 if exc.signal_name == "SIGTERM" else 130  # 128 + the signal's number
    except MtkdError as exc:
        # escaped: a message may hold brackets (pip install 'mtkd[mlflow]') that are not markup
        errors.print(f"[bold red]error:[/bold red] {escape(str(exc))}", highlight=False)
        return 2
    except KeyboardInterrupt:
        errors.print("[yellow]interrupted[/yellow]")
        return 130
    except BrokenPipeError:  # `mtkd zoo --json | head`: the reader left, which is no error
        _silence_stdout()
        return 141  # 128 + SIGPIPE, as a shell pipeline reports it


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so flushing at exit does not raise into the reader's pipe."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
