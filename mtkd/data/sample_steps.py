"""One sample on its way into the sample cache, the same in one process or in several
(``cache.py`` builds serially, ``cache_parallel.py`` in worker processes): read it (an
unreadable one fails or is skipped and counted), run the preprocessing steps (a drop is
counted), turn its labels into arrays at the cache's size; and the report of all of it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import DataError, SampleError
from ..preprocess import Preprocessor
from ..samples import Sample, SampleSource
from .resize import resize_label


@dataclass
class DataReport:
    """What happened to the samples of one data set on the way into the cache."""

    source: str
    total: int
    kept: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # load errors, by reason
    skipped_examples: list[str] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)  # by the preprocessor that dropped
    source_counts: dict[str, Any] = field(default_factory=dict)  # numbers, or dicts of them
    preprocess_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    from_cache: bool = False

    def lines(self) -> list[str]:
        out = [f"data set '{self.source}': {self.kept} of {self.total} samples kept"]
        if self.from_cache:
            out[0] += " (from the cache)"
        for reason, n in sorted(self.skipped.items()):
            out.append(f"  skipped {n} unreadable: {reason}")
        for example in self.skipped_examples:
            out.append(f"    e.g. {example}")
        for name, n in sorted(self.dropped.items()):
            out.append(f"  dropped {n} by {name}")
        for key, n in sorted(self.source_counts.items()):
            shown = ", ".join(f"{k} {v}" for k, v in n.items()) if isinstance(n, dict) else n
            out.append(f"  {key}: {shown}")
        for name, counts in sorted(self.preprocess_counts.items()):
            shown = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
            out.append(f"  {name}: {shown}")
        return out


def label_array(
    value: Any, image_shape: tuple[int, ...], size: int, resize: str = "squash"
) -> np.ndarray:
    array = np.asarray(value)
    if array.ndim == 2 and array.shape == image_shape[:2]:
        return resize_label(array, size, resize)
    return array


def read_sample(
    source: SampleSource, index: int, on_error: str, skipped: Counter[str], report: DataReport
) -> Sample | None:
    """Sample ``index``, or None when it is unreadable and ``on_error`` says skip (counted)."""
    try:
        sample: Sample | None = source[index]
    except SampleError as exc:
        if on_error == "fail":
            raise DataError(
                f"data set '{source.name}': {exc} (set data.on_error=skip to skip such samples)"
            ) from exc
        skipped[exc.reason] += 1
        if len(report.skipped_examples) < 3:
            report.skipped_examples.append(str(exc))
        return None
    return sample


def preprocess_sample(
    sample: Sample | None, steps: Sequence[Preprocessor], dropped: Counter[str]
) -> Sample | None:
    """The sample through every step; None (counted by step) when one drops it."""
    for step in steps:
        if sample is None:
            return None
        sample = step(sample)
        if sample is None:
            dropped[step.name] += 1
    return sample
