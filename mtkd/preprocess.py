"""The preprocessing contract: steps applied once to every raw sample before it is cached.

A preprocessor (e.g. a face detector that crops) sees each sample exactly once per cache
build; its output is resized to ``data.image_size`` and cached, so later epochs and later runs
never run it again. It may drop a sample by returning None; it counts what it did in
``self.counts`` and the engine reports those counts once per data set.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, is_dataclass
from typing import Any, ClassVar

from .samples import NoOptions, Sample


class Preprocessor:
    """Base class of a preprocessing plugin: set ``name`` and ``Options``, write ``__call__``."""

    name: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions

    def __init__(self, options: Any, image_size: int) -> None:
        self.options = options
        self.image_size = image_size
        self.counts: Counter[str] = Counter()

    def __call__(self, sample: Sample) -> Sample | None:
        """Return the transformed sample (image and every per-pixel label alike), or None."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """Identifies this step and its options in the cache key: change it, rebuild the cache."""
        options = self.options
        shown = (
            asdict(options) if is_dataclass(options) and not isinstance(options, type) else options
        )
        return f"{self.name}:{shown!r}"
