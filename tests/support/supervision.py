"""Reading a supervisor's failure counter in tests, and injecting one failure into a loop."""

from __future__ import annotations

import functools
from collections.abc import Callable

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from llmserve.common.supervise import Supervisor


class InjectedFailure(RuntimeError):
    """The exception a test puts into a background loop."""


def count_failures(supervisor: Supervisor) -> Callable[[str], int]:
    """Point `supervisor`'s failure counter at an SDK meter (the same instrument it creates);
    the returned function reads the counter's value for one task of its service."""
    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("llmserve")
    supervisor.failures = Supervisor(supervisor.service, meter=meter).failures

    return lambda task: _read(reader, supervisor.service, task)


def failures_from_start(monkeypatch) -> Callable[[str, str], int]:
    """Every Supervisor made from now on counts into an SDK meter (for failures that happen
    while a service starts); the returned function reads the count of (service, task)."""
    from llmserve.common import supervise

    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("llmserve")
    monkeypatch.setattr(supervise.metrics, "get_meter", lambda *_a, **_k: meter)
    return lambda service, task: _read(reader, service, task)


def _read(reader: InMemoryMetricReader, service: str, task: str) -> int:
    data = reader.get_metrics_data()
    total = 0
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name != "llmserve.background_task.failures":
                    continue
                for point in metric.data.data_points:
                    if point.attributes == {"service": service, "task": task}:
                        total += int(point.value)
    return total


def fail_once(method):
    """`method` (async) that raises InjectedFailure on its first call, then works as before."""
    calls = {"n": 0}

    @functools.wraps(method)
    async def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise InjectedFailure("injected")
        return await method(*args, **kwargs)

    return wrapper


def fail_once_sync(method):
    """`method` (plain) that raises InjectedFailure on its first call, then works as before."""
    calls = {"n": 0}

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise InjectedFailure("injected")
        return method(*args, **kwargs)

    return wrapper
