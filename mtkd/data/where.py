"""Label-range conditions: which samples a split (or a gallery) may use, by a vector label.

A condition reads ``{yaw: [-30, 30]}``: keep the samples whose ``yaw`` lies in [-30, 30]
(both ends included). The name is a component of any vector label the data set provides
(``yaw``, ``pitch``, ``roll`` of ``pose``); ``pose.yaw`` names the label too, for data sets
with two vector labels that share a component name. Several entries must all hold. A sample
that lacks the label cannot be shown to lie in the range, so it is left out (and counted).

Cross-pose protocols are built from these: train on near-frontal views
(``data.split.train_where``), enrol a near-frontal gallery (``evaluate.gallery_where``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data_schema import check_where
from ..errors import RecipeError
from ..samples import LabelSpace

if TYPE_CHECKING:  # type only: conditions read a built cache, they never build one
    from .cache import CachedSamples


@dataclass(frozen=True)
class Range:
    """``low <= labels[label][:, column] <= high``, as the recipe wrote it under ``key``."""

    key: str  # where in the recipe, e.g. data.split.train_where.yaw
    label: str
    component: str
    column: int
    low: float
    high: float


def _vector_components(spaces: Mapping[str, LabelSpace]) -> list[tuple[str, str]]:
    return [
        (label, component)
        for label, space in sorted(spaces.items())
        if space.kind == "vector"
        for component in space.names
    ]


def _resolve(name: str, key: str, spaces: Mapping[str, LabelSpace]) -> tuple[str, str]:
    """(label, component) that ``name`` (``yaw`` or ``pose.yaw``) refers to."""
    known = _vector_components(spaces)
    label, _, component = name.rpartition(".")
    found = [(lb, c) for lb, c in known if c == component and (not label or lb == label)]
    if len(found) == 1:
        return found[0]
    if not found:
        shown = ", ".join(f"{lb}.{c}" for lb, c in known) or "none"
        raise RecipeError(
            f"{key}.{name}: no vector label of the data set has this component "
            f"(its vector label components: {shown})"
        )
    labels = " and ".join(lb for lb, _ in found)
    raise RecipeError(
        f"{key}.{name}: '{component}' is a component of {labels}; name one as label.component "
        f"(e.g. {found[0][0]}.{component})"
    )


def resolve_where(raw: Any, key: str, spaces: Mapping[str, LabelSpace]) -> list[Range]:
    """The condition's entries against the data set's label spaces (an error names the key)."""
    check_where(raw, key)
    ranges = []
    for name, (low, high) in (raw or {}).items():
        label, component = _resolve(str(name), key, spaces)
        column = spaces[label].names.index(component)
        ranges.append(Range(f"{key}.{name}", label, component, column, float(low), float(high)))
    return ranges


def where_mask(
    ranges: list[Range], cached: CachedSamples, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(inside, unlabelled) per row of ``rows``: every range holds; some needed label is absent.

    ``inside`` is False where ``unlabelled`` is True: a sample without the label is left out.
    """
    rows = np.asarray(rows, dtype=np.int64)
    inside = np.ones(len(rows), dtype=bool)
    unlabelled = np.zeros(len(rows), dtype=bool)
    for r in ranges:
        if r.label not in cached.labels:  # declared, but no sample carries it
            return np.zeros(len(rows), dtype=bool), np.ones(len(rows), dtype=bool)
        present = np.asarray(cached.present[r.label][rows], dtype=bool)
        values = np.asarray(cached.labels[r.label][rows, r.column], dtype=np.float64)
        unlabelled |= ~present
        inside &= present & (values >= r.low) & (values <= r.high)
    return inside, unlabelled


def describe(raw: Any) -> str:
    """``{yaw: [-30, 30]}`` as the recipe wrote it, for report lines."""
    parts = [f"{name}: [{float(lo):g}, {float(hi):g}]" for name, (lo, hi) in (raw or {}).items()]
    return "{" + ", ".join(parts) + "}"
