"""palette_folder: images plus colour label images whose colours map to classes by a palette."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from .images import read_colour_label
from .index import Entry
from .masks import Palette, parse_palette, resize_nearest, snap_to_palette
from .options import KEY, FolderOptions, MaskOptions, MaskSizeOptions, PaletteOptions
from .source import FolderSource


@dataclass
class PaletteFolderOptions(MaskSizeOptions, PaletteOptions, MaskOptions, FolderOptions):
    """Common options, how labels are found, and the palette (``palette`` is required)."""

    images: str = "images"  # images/<person>/<view>.png beside masks/<person>/<view>.png


class PaletteFolder(FolderSource):
    """Colour labels snapped to the nearest palette colour; off-palette pixels are counted."""

    name = "palette_folder"
    Options: ClassVar[type] = PaletteFolderOptions
    has_masks = True

    def __init__(self, options: Any, image_size: int, seed: int) -> None:
        self.palette = self.make_palette(options)
        self._off_palette: dict[int, int] = {}  # per sample, so decoding twice counts once
        self._stray: dict[int, int] = {}
        super().__init__(options, image_size, seed)

    def make_palette(self, options: Any) -> Palette:
        """The palette of the options (subclasses may supply a default)."""
        return parse_palette(options.palette, f"{KEY}.palette")

    def mask_names(self) -> tuple[str, ...]:
        return self.palette.names

    def load_mask(self, index: int, entry: Entry, image: np.ndarray) -> np.ndarray | None:
        assert entry.mask is not None
        rgb = read_colour_label(entry.mask)
        verdict = self.fit_mask(index, rgb, image, entry)
        if verdict == "drop":
            return None
        options = self.options
        snapped = snap_to_palette(
            rgb, self.palette, options.tolerance, options.blends, entry.mask, options.stray_fraction
        )
        self._off_palette[index] = snapped.off_palette
        if snapped.stray:
            self._stray[index] = snapped.stray
        return resize_nearest(snapped.ids, image.shape) if verdict == "resize" else snapped.ids

    def report(self) -> dict[str, int]:
        out = super().report()
        out["masks_decoded"] = len(self._off_palette)
        out["off_palette_pixels"] = sum(self._off_palette.values())
        if self._stray:  # pixels beyond tolerance, within stray_fraction: snapped
            out["masks_with_stray_pixels"] = len(self._stray)
            out["stray_pixels"] = sum(self._stray.values())
        return out
