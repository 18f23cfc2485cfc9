"""Accuracy per bin of a continuous label, e.g. identification accuracy per yaw bin.

A model can score well on average while failing at the extremes of some nuisance variable
(profile views, strong light); one accuracy per bin makes that visible. Nothing here is
specific to pose: ``values`` is any per-sample number and ``correct`` any per-sample outcome.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

Outside = Literal["separate", "clip", "error"]


@dataclass(frozen=True)
class BinResult:
    """Samples with ``low <= value < high`` (the last regular bin also holds ``high``).

    ``accuracy`` is ``None`` for an empty bin. Out-of-range bins have ``low=-inf`` or
    ``high=+inf``; :meth:`to_dict` writes those ends as ``None`` so the result stays JSON.
    """

    low: float
    high: float
    count: int
    accuracy: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "low": self.low if math.isfinite(self.low) else None,
            "high": self.high if math.isfinite(self.high) else None,
            "count": self.count,
            "accuracy": self.accuracy,
        }


def bin_edges(bin_width: float, low: float, high: float) -> np.ndarray:
    """``low, low + w, ..., high``; if ``w`` does not divide the range the last bin is narrower."""
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"need finite low < high, got low={low}, high={high}")
    if not (math.isfinite(bin_width) and bin_width > 0):
        raise ValueError(f"bin_width must be positive, got {bin_width}")
    n = math.ceil((high - low) / bin_width - 1e-9)  # 180 / 15 = 12 bins, not 13 by rounding
    edges = low + bin_width * np.arange(n + 1, dtype=np.float64)
    edges[-1] = high
    return edges


def accuracy_by_bin(
    correct: np.ndarray,
    values: np.ndarray,
    bin_width: float = 15.0,
    low: float = -90.0,
    high: float = 90.0,
    outside: Outside = "separate",
) -> list[BinResult]:
    """Accuracy of ``correct`` within each bin of ``values``, in ascending order.

    Bins are ``[low, low + w), [low + w, low + 2w), ..., [high - w, high]``: half-open, except
    that a value exactly at ``high`` falls into the last bin. Every regular bin is reported,
    empty ones with ``count=0`` and ``accuracy=None``, so tables from different runs line up.

    Values outside ``[low, high]``, per ``outside``:

    - ``"separate"`` (default): counted in an extra bin ``(-inf, low)`` before and/or
      ``(high, +inf)`` after the regular bins; each extra bin is present only when some value
      falls in it, so a clean data set gives exactly the regular bins;
    - ``"clip"``: counted in the first or last regular bin;
    - ``"error"``: :class:`ValueError`.

    NaN values are always a :class:`ValueError` (filter unlabelled samples first).
    """
    hit, v = _checked_inputs(correct, values, outside)
    edges = bin_edges(bin_width, low, high)
    below, above = v < low, v > high
    if outside == "error" and (below.any() or above.any()):
        raise ValueError(
            f"{int(below.sum())} value(s) below {low} and {int(above.sum())} above {high}"
        )
    n_bins = len(edges) - 1
    index = np.clip(np.searchsorted(edges, v, side="right") - 1, 0, n_bins - 1)

    def result(lo: float, hi: float, mask: np.ndarray) -> BinResult:
        count = int(mask.sum())
        accuracy = float(hit[mask].mean()) if count else None
        return BinResult(low=lo, high=hi, count=count, accuracy=accuracy)

    inside = ~(below | above) if outside == "separate" else np.ones_like(hit)
    results = [
        result(float(edges[b]), float(edges[b + 1]), inside & (index == b)) for b in range(n_bins)
    ]
    if outside == "separate" and below.any():
        results.insert(0, result(-math.inf, low, below))
    if outside == "separate" and above.any():
        results.append(result(high, math.inf, above))
    return results


def _checked_inputs(
    correct: np.ndarray, values: np.ndarray, outside: str
) -> tuple[np.ndarray, np.ndarray]:
    """``correct`` as bools and ``values`` as float64, or a ValueError saying what is wrong."""
    hit = np.asarray(correct)
    v = np.asarray(values, dtype=np.float64)
    if hit.ndim != 1 or v.shape != hit.shape:
        raise ValueError(
            f"correct and values must be 1-D and equally long, got {hit.shape} and {v.shape}"
        )
    if hit.dtype != bool:
        if not np.isin(hit, (0, 1)).all():
            raise ValueError("correct must be boolean (or 0/1)")
        hit = hit.astype(bool)
    if np.isnan(v).any():
        raise ValueError(f"{int(np.isnan(v).sum())} value(s) are NaN")
    if outside not in ("separate", "clip", "error"):
        raise ValueError(f"outside must be 'separate', 'clip' or 'error', got '{outside}'")
    return hit, v
