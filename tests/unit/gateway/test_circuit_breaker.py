"""The limiter's circuit breaker: open after N failures, one trial per reset, and a trial that
never reports back (its caller left, or it expired unsent) cannot keep it open for good."""

from __future__ import annotations

from llmserve.gateway.admission.local_limits import CircuitBreaker


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_open_after_failures_then_one_trial_then_closed_on_success():
    clock = Clock()
    breaker = CircuitBreaker(failures=3, reset_s=1.0, clock=clock)
    for _ in range(3):
        assert breaker.allow()
        breaker.failure()
    assert breaker.is_open and not breaker.allow()
    clock.now += 1.01
    assert breaker.allow()  # the trial
    assert not breaker.allow()  # only one
    breaker.success()
    assert not breaker.is_open and breaker.allow()


def test_a_trial_that_never_reports_back_is_replaced_after_a_reset():
    clock = Clock()
    breaker = CircuitBreaker(failures=1, reset_s=1.0, clock=clock)
    breaker.failure()
    clock.now += 1.01
    assert breaker.allow()  # this trial's caller goes away: no success, no failure
    clock.now += 0.5
    assert not breaker.allow()
    clock.now += 0.6
    assert breaker.allow()  # a new trial
    breaker.failure()
    assert not breaker.allow()
