"""Percentiles of raw samples: each method against the definition its call sites used."""

from __future__ import annotations

import math
import random

import pytest

from llmserve.common.stats import quantile


def test_linear_interpolates():
    assert quantile([], 0.5) is None
    assert quantile([1, 2, 3, 4], 0.5) == 2.5
    assert quantile([5], 0.99) == 5
    assert quantile([4, 1, 3, 2], 0.0) == 1 and quantile([4, 1, 3, 2], 1.0) == 4


def test_nearest_rounds_the_position_half_to_even():
    assert quantile([1, 2, 3, 4], 0.5, method="nearest") == 3  # position 1.5 -> 2
    assert quantile([1, 2, 3, 4, 5, 6], 0.5, method="nearest") == 3  # position 2.5 -> 2
    assert math.isnan(quantile([], 0.5, method="nearest", default=float("nan")))


def test_floor_takes_the_sample_at_index_q_times_n():
    assert quantile([1, 2, 3, 4], 0.5, method="floor") == 3
    assert quantile([1, 2, 3, 4], 0.99, method="floor") == 4
    assert quantile([1, 2, 3, 4], 1.0, method="floor") == 4  # clamped to the last sample
    assert quantile([], 0.5, method="floor") is None


@pytest.mark.parametrize("n", [1, 2, 3, 10, 99, 100, 101, 1000])
@pytest.mark.parametrize("q", [0.5, 0.9, 0.95, 0.99])
def test_methods_match_the_definitions_they_replaced(n, q):
    rng = random.Random(n)
    values = [rng.random() for _ in range(n)]
    ordered = sorted(values)
    assert quantile(values, q, method="floor") == ordered[min(n - 1, int(q * n))]
    assert quantile(values, q, method="nearest") == ordered[min(n - 1, round(q * (n - 1)))]
    pos = (n - 1) * q
    lo, hi = int(pos), min(int(pos) + 1, n - 1)
    assert quantile(values, q) == ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def test_unknown_method_is_an_error():
    with pytest.raises(ValueError):
        quantile([1.0], 0.5, method="median")  # type: ignore[arg-type]
