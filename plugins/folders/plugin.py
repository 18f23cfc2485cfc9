"""The folder data-set plugins: the ``mtkd`` entry point ``folders``."""

from __future__ import annotations

from typing import Any

import mtkd

from .identity_folder import IdentityFolder
from .index_folder import IndexFolder
from .mut1ny import Mut1ny
from .palette_folder import PaletteFolder


@mtkd.hookimpl
def register_datasets(register: Any) -> None:
    for source in (IdentityFolder, PaletteFolder, IndexFolder, Mut1ny):
        register(source)
