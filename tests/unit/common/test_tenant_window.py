"""Combining the tenant windows of several scheduler replicas (llmserve.common.tenant_window)."""

from llmserve.common.stats import quantile
from llmserve.common.tenant_window import MAX_WAITS, TenantWindow, combine, sample_waits


def test_windows_of_two_replicas_add_up_and_quantiles_come_from_all_waits():
    s0 = [TenantWindow("a", 1.0, 300, [10.0] * 99 + [900.0], 1), TenantWindow("b", 2.0, 100, [5.0], 0)]
    s1 = [TenantWindow("a", 1.0, 100, [20.0] * 100, 2)]
    a, b = combine([s0, s1])
    assert (a.tenant, a.tokens_last_minute, a.share, a.refused_deadline) == ("a", 400, 0.8, 3)
    assert (b.tokens_last_minute, b.share, b.weight_share) == (100, 0.2, 2 / 3)
    assert (a.wait_p50_ms, a.wait_p99_ms) == (20.0, 20.0)  # of the 200 waits, not the mean of 10 and 20
    assert combine([s0])[0].wait_p99_ms == 900.0


def test_a_tenant_with_only_refusals_has_no_weight_share():
    (t,) = combine([[TenantWindow("late", 1.0, 0, [], 4)]])
    assert (t.tokens_last_minute, t.share, t.weight_share, t.refused_deadline) == (0, 0.0, 0.0, 4)


def test_sampled_waits_keep_the_quantiles():
    waits = [float(i) for i in range(10 * MAX_WAITS)]
    sample = sample_waits(waits)
    assert len(sample) == MAX_WAITS
    for q in (0.5, 0.9, 0.99):
        exact = quantile(waits, q, method="floor")
        assert abs(quantile(sample, q, method="floor") - exact) <= len(waits) / MAX_WAITS
    assert sample_waits([3.0, 1.0]) == [1.0, 3.0]
