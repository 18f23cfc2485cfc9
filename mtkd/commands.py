"""The contract for plugin-provided ``mtkd`` subcommands (e.g. ``mtkd synth``)."""

from __future__ import annotations

import argparse
from typing import ClassVar

from rich.console import Console


class Command:
    """Base class of a subcommand: ``name`` and ``help``, arguments, and what it does."""

    name: ClassVar[str] = ""
    help: ClassVar[str] = ""

    def configure(self, parser: argparse.ArgumentParser) -> None:
        """Add this command's arguments."""

    def run(self, args: argparse.Namespace, console: Console) -> int:
        """Do the work; the return value is the exit status."""
        raise NotImplementedError
