"""Errors a user can act on: each names the file, config key or plugin at fault.

The CLI prints these without a traceback; anything else is a bug in mtkd or a plugin.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path


class MtkdError(Exception):
    """Base class for every error mtkd reports to a user."""


class RecipeError(MtkdError):
    """A recipe (or an override) is wrong: unknown key, wrong type, missing file."""


class PluginError(MtkdError):
    """A plugin failed to import, registered something twice, or implements an unknown hook."""


class DataError(MtkdError):
    """A data set cannot deliver what the recipe asks of it."""


class SampleError(DataError):
    """One sample cannot be read (corrupt image, missing or mismatched mask, unknown colour).

    Data-set plugins raise it from ``__getitem__`` naming the file; the engine then stops or
    skips the sample and counts it, as ``data.on_error`` says.
    """

    def __init__(self, path: object, reason: str, detail: str = "") -> None:
        super().__init__(f"{path}: {reason}" + (f" ({detail})" if detail else ""))
        self.path = str(path)
        self.reason = reason  # a short fixed phrase: skipped samples are counted by it
        self.detail = detail  # what is particular to this file (sizes, colours), if anything


def close_matches(name: str, known: Iterable[str]) -> str:
    """' (did you mean ...?)' for names close to ``name``, or '' when none is."""
    close = difflib.get_close_matches(name, sorted(set(known)), n=3, cutoff=0.6)
    return (" (did you mean " + " or ".join(f"'{c}'" for c in close) + "?)") if close else ""


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """Return a ' (did you mean ...?)' hint, or the list of known names when nothing is close."""
    options = sorted(set(known))
    hint = close_matches(name, options)
    if hint:
        return hint
    if not options:
        return " (none are registered)"
    shown = ", ".join(options[:12]) + (", ..." if len(options) > 12 else "")
    return f" (known: {shown})"


class Interrupted(MtkdError):
    """Training stopped on Ctrl-C or SIGTERM after writing a checkpoint it can resume from."""

    def __init__(self, run_dir: Path | None, signal_name: str | None = None) -> None:
        where = f"mtkd resume {run_dir}" if run_dir else "(no run folder: nothing was saved)"
        by = f" by {signal_name}" if signal_name and signal_name != "SIGINT" else ""
        super().__init__(f"interrupted{by}; a checkpoint was saved. Continue with: {where}")
        self.run_dir = run_dir
        self.signal_name = signal_name


class OptionError(ValueError):
    """A plugin option with a bad value, raised where the option is checked (an options
    dataclass's ``__post_init__``, a task's ``setup``); the engine names the recipe key."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(f"{option}: {message}" if option else message)
        self.option, self.message = option, message


def check_options(options: object, rules: Iterable[tuple[str, bool, str]]) -> None:
    """Raise :class:`OptionError` for the first ``(option, ok, why)`` rule that fails, with
    the option's value: ``check_options(self, [("dim", self.dim >= 1, "must be >= 1")])``."""
    for option, ok, why in rules:
        if not ok:
            raise OptionError(option, f"{getattr(options, option)!r} {why}")
