"""What ``mtkd resume RUN key=value`` may change, and ``config.yaml`` recording what ran.

An interrupted run continues from a checkpoint of its weights, optimizer state and data
order, so an override that changes the data, the model or the optimizer cannot take effect
honestly (a new image size would train on other images, a new learning rate would be
overwritten by the optimizer state). Those are refused, naming the keys. Settings that only
say how long to train, how to report or how to evaluate are applied, and ``config.yaml`` is
rewritten (atomically) so that ``eval``, ``predict`` and ``export`` see what really ran.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..config import load_recipe
from ..errors import RecipeError
from ..utils.files import write_text_atomic
from ..utils.layout import CONFIG
from .folder import require_run_folder

# keys a resumed run may change: when to stop, how to report and evaluate, where it runs
SAFE_ON_RESUME = (
    "trainer.max_epochs",
    "trainer.patience",
    "trainer.min_delta",
    "trainer.progress",
    "trainer.console",
    "trainer.log_every",
    "trainer.checkpoint_every",
    "trainer.on_nan",
    "trainer.max_skipped_steps",
    "trainer.device",
    "data.num_workers",
    "data.cache_dir",
    "distill.enabled",
    "output.plots",
)
# where the run lives: a resume continues in its own folder, wherever the recipe points
LOCATION = ("output.dir", "output.root")
SAFE_PREFIXES = ("evaluate.",)


def is_safe_on_resume(key: str) -> bool:
    return key in SAFE_ON_RESUME or key.startswith(SAFE_PREFIXES)


def flat_settings(node: Any, prefix: str = "") -> dict[str, Any]:
    """{dotted key: leaf value} of a plain recipe container; an empty section is a leaf
    (``{}``), so a section emptied or filled counts as a change. Resume and study reuse
    compare saved and planned settings with it."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(flat_settings(value, f"{prefix}{key}."))
        return out if out else {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): node}


def changed_settings(before: DictConfig, after: DictConfig) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (old, new)} for every leaf that differs (or exists on one side only)."""
    old = flat_settings(OmegaConf.to_container(before, resolve=True))
    new = flat_settings(OmegaConf.to_container(after, resolve=True))
    return {
        k: (old.get(k), new.get(k))
        for k in sorted(old.keys() | new.keys())
        if old.get(k) != new.get(k)
    }


def resume_recipe(
    run_dir: str | Path, overrides: Sequence[str] = (), overlays: Sequence[str | Path] = ()
) -> DictConfig:
    """The interrupted run's recipe with ``overrides`` and ``overlays`` merged (not yet checked:
    :func:`settle_resume` does that when the run starts)."""
    return load_recipe(require_run_folder(run_dir) / CONFIG, overrides, overlays)


def _refuse_a_move(run_dir: str | Path, changed: dict[str, tuple[Any, Any]]) -> None:
    """A resume writes into the folder it resumes: ``output.dir`` elsewhere (or another
    ``output.root``) would be ignored, so it is refused rather than recorded as if it ran.
    ``output.dir`` naming the folder itself (a study moved with its runs) is fine."""
    here = Path(run_dir).resolve()
    for key in LOCATION:
        if key not in changed:
            continue
        new = changed[key][1]
        if key == "output.dir" and new is not None and Path(str(new)).resolve() == here:
            continue
        raise RecipeError(
            f"resume: {key}={new} is refused: a resumed run continues in its own folder "
            f"'{run_dir}'; to move it, move that folder (then `mtkd resume NEW_PLACE`)"
        )


def settle_resume(
    run_dir: str | Path, cfg: DictConfig, write: bool = True
) -> dict[str, tuple[Any, Any]]:
    """What ``cfg`` changes in the interrupted run's recipe ({key: (old, new)}).

    Raises :class:`RecipeError` naming every key that would change the data, model or
    optimizer. When only safe keys changed, ``config.yaml`` is rewritten (``write``) to
    record them, so it always says what ran.
    """
    path = require_run_folder(run_dir) / CONFIG
    changed = changed_settings(load_recipe(path), cfg)
    _refuse_a_move(run_dir, changed)
    unsafe = [key for key in changed if not is_safe_on_resume(key) and key not in LOCATION]
    if unsafe:
        raise RecipeError(
            f"resume: {', '.join(unsafe)} would change the data, model or optimizer of the "
            f"interrupted run in '{run_dir}', which continues with the settings it started "
            "with; a resume may change only when to stop, how to report and how to evaluate "
            f"({', '.join(SAFE_ON_RESUME[:4])}, data.num_workers, evaluate.*, ...). For other "
            f"settings start a new run: mtkd run {path} KEY=VALUE --out NEW_FOLDER"
        )
    if changed and write:
        write_text_atomic(path, OmegaConf.to_yaml(cfg))
    return changed
