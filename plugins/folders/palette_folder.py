"""palette_folder: images plus colour label images whose colours map to classes by a palette."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

import mtkd

from .images import read_colour_label
from .index import Entry
from .masks import Palette, parse_palette, snap_to_palette
from .options import KEY, FolderOptions, MaskOptions, PaletteOptions
from .source import FolderSource, check_size


@dataclass
class PaletteFolderOptions(PaletteOptions, MaskOptions, FolderOptions):
    """Common options, how labels are found, and the palette (``palette`` is required)."""

    images: str = "images"  # images/<person>/<view>.png beside masks/<person>/<view>.png


class PaletteFolder(FolderSource):
    """Colour labels snapped to the nearest palette colour; off-palette pixels are counted."""

    name = "palette_folder"
    Options: ClassVar[type] = PaletteFolderOptions
    has_masks = True

    def __init__(self, options: Any, image_size: int, seed: int) -> None:
        self.palette = self.make_palette(options)
        if options.tolerance < 0:
            raise mtkd.RecipeError(f"{KEY}.tolerance: must be >= 0, got {options.tolerance}")
        self._off_palette: dict[int, int] = {}  # per sample, so decoding twice counts once
        super().__init__(options, image_size, seed)

    def make_palette(self, options: Any) -> Palette:
        """The palette of the options (subclasses may supply a default)."""
        return parse_palette(options.palette, f"{KEY}.palette")

    def mask_names(self) -> tuple[str, ...]:
        return self.palette.names

    def load_mask(self, index: int, entry: Entry, image: np.ndarray) -> np.ndarray:
        assert entry.mask is not None
        rgb = read_colour_label(entry.mask)
        check_size(rgb, image, entry)
        options = self.options
        ids, off = snap_to_palette(rgb, self.palette, options.tolerance, options.blends, entry.mask)
        self._off_palette[index] = off
        return ids

    def report(self) -> dict[str, int]:
        out = super().report()
        out["masks_decoded"] = len(self._off_palette)
        out["off_palette_pixels"] = sum(self._off_palette.values())
        return out
