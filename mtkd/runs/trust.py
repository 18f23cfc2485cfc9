"""Plugins a run folder names load only when the user trusts that folder.

A run folder can come from anyone, and a ``plugins:`` entry in its ``config.yaml`` is code:
importing it runs it. So opening a run (``predict``, ``embed``, ``eval``, ``export``,
:func:`mtkd.load_run`) loads the installed entry-point plugins as always, and a module the
folder names only if it is one of those or already imported (importing it again runs
nothing). Anything else (a ``.py`` file, another module) needs ``--trust-plugins`` or
``MTKD_TRUST_PLUGINS=1``. Plugins the user names on the command line (overlays, overrides)
are the user's own and load.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ..errors import PluginError
from ..plugins import ENTRY_POINT_GROUP, PluginSet, load_plugins

TRUST_ENV = "MTKD_TRUST_PLUGINS"
_YES = ("1", "true", "yes", "on")


def trusted_by_env() -> bool:
    return os.environ.get(TRUST_ENV, "").strip().lower() in _YES


def _harmless(ref: str) -> bool:
    """A module already imported, or an installed entry-point plugin's: no new code runs."""
    if ref.endswith(".py") or "/" in ref or os.sep in ref:
        return False
    installed = {ep.module for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    return ref in sys.modules or ref in installed


def untrusted(refs: Sequence[str]) -> list[str]:
    """The entries of a run folder's ``plugins:`` that would run code if imported."""
    return [str(ref) for ref in refs if not _harmless(str(ref))]


def run_folder_plugins(
    refs: Sequence[str], source: Path, *, trust: bool = False, extra: Sequence[str] = ()
) -> PluginSet:
    """Plugins for opening a run whose ``source`` (its config.yaml) lists ``refs``.

    ``extra``: plugins the user named (always loaded). Raises :class:`PluginError` naming
    what was not loaded, and how to allow it, when ``refs`` hold code the user has not trusted.
    """
    refs = [str(r) for r in refs]
    if not (trust or trusted_by_env()):
        blocked = untrusted(refs)
        if blocked:
            raise PluginError(
                f"'{source}' names plugin(s) that were not loaded: {', '.join(blocked)} "
                "(opening a run folder never runs code it names); if you trust this run "
                f"folder, pass --trust-plugins or set {TRUST_ENV}=1"
            )
    return load_plugins([*refs, *(r for r in extra if r not in refs)])
