"""Latency statistics."""

from __future__ import annotations

import math

import pytest

from vla_export.stats import LatencyStats
from vla_export.errors import VlaExportError


def test_percentiles_and_fps_of_known_samples():
    s = LatencyStats.from_seconds([i / 1000 for i in range(1, 101)])  # 1..100 ms
    assert (s.n, s.min_ms, s.max_ms) == (100, pytest.approx(1.0), pytest.approx(100.0))
    assert s.mean_ms == pytest.approx(50.5)
    assert s.p50_ms == pytest.approx(50.5)
    assert s.p90_ms == pytest.approx(90.1)
    assert s.p99_ms == pytest.approx(99.01)
    assert s.fps == pytest.approx(1000 / 50.5)
    assert s.to_dict()["fps"] == s.fps


def test_single_sample_and_order_independence():
    a = LatencyStats.from_seconds([0.003, 0.001, 0.002])
    b = LatencyStats.from_seconds([0.001, 0.002, 0.003])
    assert a == b
    one = LatencyStats.from_seconds([0.004])
    assert one.min_ms == one.p99_ms == one.max_ms == pytest.approx(4.0)
    assert math.isclose(one.fps, 250.0)


@pytest.mark.parametrize("samples", [[], [0.001, -0.001], [float("nan")]])
def test_bad_samples_are_errors(samples):
    with pytest.raises(VlaExportError):
        LatencyStats.from_seconds(samples)
