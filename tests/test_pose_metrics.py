"""Accuracy per bin of a continuous value (e.g. yaw): edges, empty bins, out-of-range values."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from mtkd.metrics.pose import BinResult, accuracy_by_bin, bin_edges


def test_accuracy_per_bin_with_hand_counted_values() -> None:
    values = np.array([-90.0, -80.0, -75.0, -1.0, 0.0, 14.9, 15.0, 89.0, 90.0])
    correct = np.array([True, False, True, True, True, False, True, False, True])
    bins = accuracy_by_bin(correct, values)
    assert len(bins) == 12  # 180° / 15°
    assert [(b.low, b.high) for b in bins[:2]] == [(-90.0, -75.0), (-75.0, -60.0)]
    by_low = {b.low: b for b in bins}
    assert by_low[-90.0] == BinResult(-90.0, -75.0, 2, 0.5)  # -90 ✓, -80 ✗
    assert by_low[-75.0] == BinResult(-75.0, -60.0, 1, 1.0)  # -75 is a low edge
    assert by_low[-15.0] == BinResult(-15.0, 0.0, 1, 1.0)  # -1
    assert by_low[0.0] == BinResult(0.0, 15.0, 2, 0.5)  # 0 ✓, 14.9 ✗
    assert by_low[15.0] == BinResult(15.0, 30.0, 1, 1.0)
    assert by_low[75.0] == BinResult(75.0, 90.0, 2, 0.5)  # 89 ✗, and 90 = high ✓
    assert sum(b.count for b in bins) == len(values)


def test_empty_bins_are_reported_with_no_accuracy() -> None:
    bins = accuracy_by_bin(np.array([True, True]), np.array([-10.0, 10.0]), bin_width=30)
    assert [b.count for b in bins] == [0, 0, 1, 1, 0, 0]
    assert [b.accuracy for b in bins] == [None, None, 1.0, 1.0, None, None]
    assert bins[0].to_dict() == {"low": -90.0, "high": -60.0, "count": 0, "accuracy": None}


def test_a_width_that_does_not_divide_the_range_makes_the_last_bin_narrower() -> None:
    assert bin_edges(40, -90, 90).tolist() == [-90, -50, -10, 30, 70, 90]
    assert bin_edges(0.1, 0, 1.2).size == 13  # 12 bins despite 1.2 / 0.1 = 11.999...


def test_values_outside_the_range_get_their_own_bins_by_default() -> None:
    values = np.array([-120.0, -100.0, 0.0, 95.0])
    correct = np.array([True, False, True, False])
    bins = accuracy_by_bin(correct, values, bin_width=90)
    assert bins[0] == BinResult(-math.inf, -90.0, 2, 0.5)
    assert [(b.low, b.high, b.count) for b in bins[1:3]] == [(-90, 0, 0), (0, 90, 1)]
    assert bins[3] == BinResult(90.0, math.inf, 1, 0.0)
    assert bins[0].to_dict()["low"] is None and bins[3].to_dict()["high"] is None
    json.dumps([b.to_dict() for b in bins], allow_nan=False)  # plain JSON

    clipped = accuracy_by_bin(correct, values, bin_width=90, outside="clip")
    assert [(b.count, b.accuracy) for b in clipped] == [(2, 0.5), (2, 0.5)]
    with pytest.raises(ValueError, match="2 value"):
        accuracy_by_bin(correct, values, bin_width=90, outside="error")


def test_no_extra_bins_when_every_value_is_in_range() -> None:
    bins = accuracy_by_bin(np.array([1, 0]), np.array([-90.0, 90.0]), bin_width=90)
    assert [(b.low, b.high, b.count, b.accuracy) for b in bins] == [
        (-90, 0, 1, 1.0),
        (0, 90, 1, 0.0),
    ]


@pytest.mark.parametrize(
    ("correct", "values", "kwargs", "message"),
    [
        ([True], [0.0, 1.0], {}, "equally long"),
        ([True], [math.nan], {}, "NaN"),
        ([3], [0.0], {}, "boolean"),
        ([True], [0.0], {"bin_width": 0}, "bin_width"),
        ([True], [0.0], {"low": 10, "high": 10}, "low < high"),
        ([True], [0.0], {"outside": "drop"}, "outside"),
    ],
)
def test_bad_input_is_rejected(
    correct: list[object], values: list[float], kwargs: dict, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        accuracy_by_bin(np.array(correct), np.array(values), **kwargs)
