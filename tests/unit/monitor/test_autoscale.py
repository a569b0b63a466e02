"""The recommended worker count."""

from __future__ import annotations

from llmserve.monitor.autoscale import Load, ScalingTargets, recommend

T = ScalingTargets(queue_per_worker=8, kv_utilization=0.8, ttft_p99_s=2.0, min_workers=1, max_workers=10)


def test_idle_fleet_scales_to_the_minimum():
    assert recommend(Load(4, 0, 0.1, 0.2), T) == 1
    assert recommend(Load(None, None, None, None), T) == 1


def test_queue_depth_asks_for_workers_even_from_zero():
    assert recommend(Load(0, 40, None, None), T) == 5


def test_the_most_demanding_signal_wins_and_is_bounded():
    assert recommend(Load(2, 0, 1.0, 1.0), T) == 3  # KV: ceil(2 * 1.0 / 0.8)
    assert recommend(Load(2, 0, 0.5, 6.0), T) == 6  # TTFT: ceil(2 * 6 / 2)
    assert recommend(Load(8, 500, 1.0, 30.0), T) == 10


def test_within_tolerance_keeps_the_current_count():
    assert recommend(Load(4, 0, 0.84, None), T) == 4
