"""The synthetic_heads plugin: the module its entry point names, registering the data set
(``source.py``) and the ``mtkd synth`` command (``export.py``, which renders that data set to
disk). Kept apart from both so that neither imports the other back."""

from __future__ import annotations

from typing import Any

import mtkd

from .export import SynthCommand
from .source import SyntheticHeads


@mtkd.hookimpl
def register_datasets(register: Any) -> None:
    register(SyntheticHeads)


@mtkd.hookimpl
def register_commands(register: Any) -> None:
    register(SynthCommand)
