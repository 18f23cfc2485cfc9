"""The contract of an ``mtkd`` subcommand: mtkd's own (``mtkd run``, registered by
``mtkd.cli``) and those plugins add (``mtkd synth``) alike."""

from __future__ import annotations

import argparse
from typing import ClassVar

from rich.console import Console


class Command:
    """Base class of a subcommand: ``name`` and ``help``, arguments, and what it does."""

    name: ClassVar[str] = ""  # the subcommand: ``mtkd <name>``
    help: ClassVar[str] = ""  # its line in ``mtkd --help``
    # the paragraph ``mtkd <name> --help`` shows under its usage: None repeats ``help``,
    # "" shows none
    description: ClassVar[str | None] = None

    def configure(self, parser: argparse.ArgumentParser) -> None:
        """Add this command's arguments."""

    def run(self, args: argparse.Namespace, console: Console) -> int:
        """Do the work; the return value is the exit status."""
        raise NotImplementedError
