"""The preprocessing contract: steps applied once to every raw sample before it is cached.

A preprocessor (e.g. a face detector that crops) sees each sample exactly once per cache
build; its output is resized to ``data.image_size`` and cached, so later epochs and later runs
never run it again. It may drop a sample by returning None; it counts what it did in
``self.counts`` and the engine reports those counts once per data set.
"""

from __future__ import annotations

from collections import Counter
from typing import ClassVar

from .options import Configurable, OptionsT, options_repr
from .samples import Sample


class Preprocessor(Configurable[OptionsT]):
    """Base class of a preprocessing plugin: set ``name``, write ``__call__``; the generic
    parameter is the dataclass of its recipe options (``Preprocessor[CropOptions]``)."""

    name: ClassVar[str] = ""  # the registry name: an entry of ``data.preprocess``

    def __init__(self, options: OptionsT, image_size: int) -> None:
        """``image_size`` is ``data.image_size``, what the output is resized to afterwards."""
        self.options = options
        self.image_size = image_size
        self.counts: Counter[str] = Counter()

    def __call__(self, sample: Sample) -> Sample | None:
        """Return the transformed sample (image and every per-pixel label alike), or None."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """Identifies this step and its options in the cache key: change it, rebuild the cache."""
        return f"{self.name}:{options_repr(self.options)}"
