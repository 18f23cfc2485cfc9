"""Studies: several recipes (and seeds) run under shared overrides, compared in one table.

A study file has a top-level ``study:`` key::

    study:
      members: [mobilenetv2_id, seg_distilled_id]   # beside this file, or mtkd's shipped ones
      seeds: [0, 1, 2]
      overlays: [profiles/cpu_quick.yaml]            # applied to every member
      overrides: [trainer.max_epochs=20]             # applied to every member

A member is a recipe name, or a variant of one with its own overrides and name::

      members:
        - seg_distilled_id
        - {name: seg_uncertainty, recipe: seg_distilled_id,
           overrides: [trainer.weighting.name=uncertainty]}

Each member x seed trains into ``<study folder>/<member>-seed<k>/``. A member whose run
completed (its ``results.json`` does not say ``"completed": false``) is not run again; a
member killed mid-training, or one that crashed after writing its results (while plotting
or logging), continues from its last checkpoint, so an interrupted study resumes where it
stopped. A member that fails does not stop the others: the table marks it, ``study.json``
holds its error, and the study ends with an error naming it.
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from rich.console import Console
from rich.markup import escape

from ..config import load_recipe, read_yaml_mapping
from ..console import make_console
from ..errors import Interrupted, MtkdError, RecipeError, did_you_mean
from ..recipe_files import find_recipe
from ..utils.checkpoint import write_json
from ..utils.layout import CONFIG, has_checkpoint, run_status
from ..utils.run_lock import RunFolderBusy, claim_run_folder
from .compare import comparison_rows, markdown_table, print_table, read_results
from .pipeline import run
from .resume import flat_settings


@dataclass
class StudyConfig:
    members: list[Any] = field(default_factory=list)  # recipe names or {name, recipe, overrides}
    seeds: list[int] = field(default_factory=lambda: [0])
    overlays: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)
    root: str = "runs"  # the study folder is <root>/<study name> unless dir is set
    dir: str | None = None


def is_study(path: str | Path) -> bool:
    """Whether ``path`` (a file, or a recipe name: :func:`find_recipe`) is a study file."""
    try:
        data = yaml.safe_load(find_recipe(path).read_text())
    except (OSError, yaml.YAMLError, RecipeError):
        return False
    return isinstance(data, dict) and "study" in data


def load_study(path: str | Path, overrides: Sequence[str] = ()) -> StudyConfig:
    """Read a study file; ``study.*`` overrides apply to the study itself."""
    path = find_recipe(path)
    data = read_yaml_mapping(path, "a study file")
    unknown = set(data) - {"study"}
    if unknown:
        raise RecipeError(f"{path}: a study file holds only 'study:', found {sorted(unknown)}")
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(StudyConfig), data.get("study") or {})
        for item in overrides:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([item.removeprefix("study.")]))
    except OmegaConfBaseException as exc:
        key = str(getattr(exc, "full_key", "") or "?")
        leaf = key.rpartition(".")[2]
        raise RecipeError(
            f"{path}: study.{key}: {str(exc).splitlines()[0]}"
            + did_you_mean(leaf, StudyConfig.__dataclass_fields__)
        ) from exc
    study: StudyConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    if not study.members:
        raise RecipeError(f"{path}: study.members lists no recipe")
    names = [_member(path, i, entry).name for i, entry in enumerate(study.members)]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise RecipeError(f"{path}: study.members: names used twice: {twice}")
    return study


@dataclass
class Member:
    name: str  # the run folders' and the table's name
    recipe: Path
    overrides: list[str]


def _member(study_path: Path, index: int, entry: Any) -> Member:
    where = f"{study_path}: study.members[{index}]"
    if isinstance(entry, str):
        name, recipe, overrides = Path(entry).stem, entry, []
    elif isinstance(entry, dict):
        unknown = set(entry) - {"name", "recipe", "overrides"}
        if unknown or "recipe" not in entry:
            raise RecipeError(
                f"{where}: a variant is {{name, recipe, overrides}}, got keys {sorted(entry)}"
            )
        recipe = str(entry["recipe"])
        name = str(entry.get("name") or Path(recipe).stem)
        overrides = [str(o) for o in entry.get("overrides") or []]
    else:
        raise RecipeError(f"{where}: expected a recipe name or a mapping, got {entry!r}")
    try:  # beside the study file, then among mtkd's shipped recipes
        path = find_recipe(recipe, study_path.parent)
    except RecipeError as exc:
        raise RecipeError(f"{where}: {exc}") from exc
    return Member(name, path, overrides)


# keys that change where a run is written or logged, not what it computes: a member may be
# reused, or resumed, with loggers added or the study renamed
UNSCORED = frozenset(
    (
        "output.dir",
        "output.experiment",
        "output.loggers",
        "output.mlflow_uri",
        "output.images_every",
    )
)


def _resolved(saved_path: Path) -> dict[str, Any]:
    """A saved config.yaml as the run saw it: a member override like
    ``path=runs/x-seed${data.split.seed}`` is saved as written and compared resolved."""
    raw: dict[str, Any] = yaml.safe_load(saved_path.read_text()) or {}
    try:
        resolved: Any = OmegaConf.to_container(OmegaConf.create(raw), resolve=True)
    except OmegaConfBaseException:
        return raw  # an interpolation that no longer resolves: compare it as written
    return {str(k): v for k, v in resolved.items()} if isinstance(resolved, dict) else raw


def _check_same_settings(run_dir: Path, cfg: Any, finished: bool = True) -> None:
    """A finished (or interrupted) member is reused only if it ran with the settings planned now.

    Keys only one side has are ignored (a newer mtkd adds keys with defaults); a changed value
    means the study's settings changed since that run, and reusing it would mix profiles.
    """
    saved_path = run_dir / CONFIG
    if not saved_path.is_file():
        return
    saved = flat_settings(_resolved(saved_path))
    planned = flat_settings(OmegaConf.to_container(cfg, resolve=True))
    changed = sorted(
        k for k in saved.keys() & planned.keys() if saved[k] != planned[k] and k not in UNSCORED
    )
    if changed:
        shown = ", ".join(f"{k}: {saved[k]!r} → {planned[k]!r}" for k in changed[:6])
        raise RecipeError(
            f"'{run_dir}' holds {'a finished' if finished else 'an interrupted'} run with other "
            f"settings ({shown}); move it away or "
            "give the study another folder (study.dir=...) before running it again"
        )


def _resumable(run_dir: Path, cfg: Any) -> Path | None:
    """An interrupted member continues from its last checkpoint: hours of training survive a
    killed session. Its settings must be the ones planned now (else the error says which)."""
    if not has_checkpoint(run_dir):
        return None
    _check_same_settings(run_dir, cfg, finished=False)
    return run_dir


@dataclass
class PlannedRun:
    member: Member
    seed: int
    run_dir: Path
    cfg: Any  # the member's loaded recipe with the study's and the seed's overrides


def plan_study(
    path: str | Path, overrides: Sequence[str] = (), overlays: Sequence[str | Path] = ()
) -> tuple[Path, list[PlannedRun]]:
    """(study folder, every member x seed with its loaded recipe), seed by seed.

    Loading every recipe up front means a typo in the last member fails before the first
    one trains; nothing is written.
    """
    path = find_recipe(path)
    study_overrides = [o for o in overrides if o.startswith("study.")]
    member_overrides = [o for o in overrides if not o.startswith("study.")]
    study = load_study(path, study_overrides)
    folder = Path(study.dir) if study.dir else Path(study.root) / path.stem
    shared_overlays = [find_recipe(o, path.parent, profile=True) for o in study.overlays]
    shared_overlays += [find_recipe(o, profile=True) for o in overlays]
    members = [_member(path, i, entry) for i, entry in enumerate(study.members)]
    planned = []
    # seed by seed: an interrupted study already holds whole tables for its first seeds
    for seed in study.seeds:
        for member in members:
            run_dir = folder / f"{member.name}-seed{seed}"
            cfg = load_recipe(
                member.recipe,
                [
                    *study.overrides,
                    *member.overrides,
                    *member_overrides,
                    f"trainer.seed={seed}",
                    f"data.split.seed={seed}",
                ],
                shared_overlays,
            )
            cfg.name = member.name
            cfg.output.dir = str(run_dir)
            cfg.output.experiment = cfg.output.experiment or path.stem  # loggers group a study
            planned.append(PlannedRun(member, seed, run_dir, cfg))
    return folder, planned


def run_study(
    path: str | Path,
    overrides: Sequence[str] = (),
    overlays: Sequence[str | Path] = (),
    console: Console | None = None,
) -> Path:
    """Run every member x seed not already finished; write ``table.md`` and ``study.json``."""
    path = find_recipe(path)
    console = console or make_console()
    folder, plan = plan_study(path, overrides, overlays)
    folder.mkdir(parents=True, exist_ok=True)
    # what to do with each member's folder is settled before anything trains, so a changed
    # setting is reported at once rather than after hours of other members
    finished = {p.run_dir for p in plan if run_status(p.run_dir) == "finished"}
    for planned in plan:
        if planned.run_dir in finished:
            _check_same_settings(planned.run_dir, planned.cfg)
        else:  # decided again once claimed; here only checked, before anything trains
            _resumable(planned.run_dir, planned.cfg)
    failed: dict[Path, str] = {}
    for index, planned in enumerate(plan, 1):
        title = f"[{index}/{len(plan)}] {planned.member.name} seed {planned.seed}"
        if planned.run_dir in finished:
            console.print(f"{title}: done before, skipped")
            continue
        message = _claim_and_run(planned, title, console)
        if message is not None:
            failed[planned.run_dir] = message
    _write_outcome(path, folder, plan, failed, console)
    return folder


def _write_outcome(
    path: Path, folder: Path, plan: list[PlannedRun], failed: dict[Path, str], console: Console
) -> None:
    """table.md, study.json and the plots of every finished member; an error if any failed."""
    # members another process trains (the same study started twice) join the table of the
    # process that finishes last
    done = [p for p in plan if p.run_dir not in failed and run_status(p.run_dir) == "finished"]
    pending = [p for p in plan if p.run_dir not in failed and p not in done]
    results = [read_results(p.run_dir) for p in done]
    members = list(dict.fromkeys(p.member.name for p in plan))
    failures = Counter(p.member.name for p in plan if p.run_dir in failed)
    rows = comparison_rows(results, order=members, failed=failures)
    table = folder / "table.md"
    table.write_text(f"# Study {path.stem}\n\n" + markdown_table(rows))
    print_table(console, rows, f"study {path.stem}")
    console.print(f"table: {table}", highlight=False, soft_wrap=True)
    binned = [r for r in results if r.get("accuracy_by_bin")]
    for task in sorted({t for r in binned for t in r["accuracy_by_bin"]["tasks"]}):
        from ..viz.plots import plot_accuracy_by_bin

        plot_accuracy_by_bin(binned, folder / f"accuracy_by_bin-{task}.png", task=task)
    summary: dict[str, Any] = {
        "study": path.stem,
        "members": members,
        "seeds": sorted({p.seed for p in plan}),
        "runs": [str(p.run_dir) for p in plan],
        "failed": {str(run_dir): message for run_dir, message in failed.items()},
    }
    write_json(folder / "study.json", summary)
    console.print(f"study folder: {folder}")
    if pending:
        names = ", ".join(p.run_dir.name for p in pending)
        console.print(
            f"[yellow]{len(pending)} run(s) still train in another process ({names}); the "
            "table is written again when that process finishes",
            highlight=False,
        )
    if failed:
        named = "; ".join(f"{d.name}: {m}" for d, m in failed.items())
        raise MtkdError(
            f"study {path.stem}: {len(failed)} of {len(plan)} run(s) failed ({named}); the "
            f"others finished and are in {folder / 'table.md'}; fix it and run the study again "
            "(finished members are not rerun)"
        )


def _claim_and_run(planned: PlannedRun, title: str, console: Console) -> str | None:
    """Train one member x seed unless another process holds its folder; what to do with
    the folder is decided only once it is claimed (the other process may have finished it)."""
    try:
        with claim_run_folder(planned.run_dir):
            if run_status(planned.run_dir) == "finished":
                console.print(f"{title}: finished by another process, skipped")
                return None
            resume_dir = _resumable(planned.run_dir, planned.cfg)
            return _run_member(planned, title, resume_dir, console)
    except RunFolderBusy as busy:
        console.print(f"{title}: being trained by another process ({busy.holder}), skipped")
        return None


def _run_member(
    planned: PlannedRun, title: str, resume_dir: Path | None, console: Console
) -> str | None:
    """Train one member x seed (resuming it where it can); its error as one line, or None."""
    if resume_dir is None and planned.run_dir.exists():  # killed before its first checkpoint
        shutil.rmtree(planned.run_dir)
    how = ""
    if resume_dir is not None:
        crashed = run_status(resume_dir) == "crashed"
        how = " crashed at its end, resumed to finish" if crashed else " resumed"
        how += " from its checkpoint"
    console.print(f"[bold]{title}[/bold]{how}")
    try:
        run(planned.cfg, console=console, resume_dir=resume_dir)
    except Interrupted:
        raise  # Ctrl-C or SIGTERM stops the study; it resumes where it stopped
    except Exception as exc:  # one member's failure must not cost the others their runs
        message = _one_line(exc)
        console.print(f"[red]{title} failed: {escape(message)}", highlight=False)
        return message
    return None


def _one_line(exc: BaseException) -> str:
    """An error as one line: its message's first line, or its type for an empty one."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return first if isinstance(exc, MtkdError) else f"{type(exc).__name__}: {first}".rstrip(": ")
