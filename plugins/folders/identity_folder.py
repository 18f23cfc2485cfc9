"""identity_folder: ``root/<person>/<image>`` folders without masks (ORL, LFW style)."""

from __future__ import annotations

from dataclasses import dataclass

from .options import FolderOptions
from .source import FolderSource


@dataclass
class IdentityFolderOptions(FolderOptions):
    """Only the common options: where images are, and where identity, pose and split come from."""


class IdentityFolder(FolderSource):
    """Identity-only images; in a multi-task run they train the identification task alone."""

    name = "identity_folder"
    Options = IdentityFolderOptions
