"""The supervisor: a failed loop is counted and restarted with backoff, or escalated once."""

from __future__ import annotations

import asyncio
import threading

from llmserve.common.supervise import Supervisor
from tests.support.supervision import InjectedFailure, count_failures


async def test_a_restarted_loop_is_counted_and_runs_again_with_backoff():
    sup = Supervisor("svc", initial_backoff_s=0.01, max_backoff_s=0.04)
    failures = count_failures(sup)
    runs: list[float] = []

    async def loop():
        runs.append(asyncio.get_running_loop().time())
        if len(runs) <= 3:
            raise InjectedFailure("boom")

    await sup.spawn("work", loop)
    assert len(runs) == 4
    assert failures("work") == 3
    gaps = [b - a for a, b in zip(runs, runs[1:], strict=False)]
    assert gaps[1] >= 0.02 and gaps[2] >= 0.04  # the backoff doubles
    assert sup.fatal is None


async def test_a_fatal_failure_escalates_once_and_does_not_restart():
    sup = Supervisor("svc")
    failures = count_failures(sup)
    escalated: list[str] = []
    sup.on_fatal = lambda task, e: escalated.append(task)
    runs = 0

    async def loop():
        nonlocal runs
        runs += 1
        raise InjectedFailure("boom")

    await sup.spawn("intake", loop, "fatal")
    sup.fail("other", RuntimeError("later"))
    assert runs == 1 and escalated == ["intake"] and failures("intake") == 1


async def test_cancellation_is_not_a_failure():
    sup = Supervisor("svc")
    failures = count_failures(sup)
    sup.on_fatal = lambda task, e: (_ for _ in ()).throw(AssertionError("escalated"))
    sup.spawn("forever", lambda: asyncio.sleep(3600), "fatal")
    await asyncio.sleep(0)
    await sup.stop()
    assert failures("forever") == 0 and sup.fatal is None


async def test_a_thread_reports_a_fatal_failure_to_the_event_loop():
    sup = Supervisor("worker")
    failures = count_failures(sup)
    sup.watch(asyncio.get_running_loop())
    escalated = asyncio.Event()
    sup.on_fatal = lambda task, e: escalated.set()
    thread = threading.Thread(target=sup.fail_threadsafe, args=("engine-m", InjectedFailure("step")))
    thread.start()
    thread.join()
    await asyncio.wait_for(escalated.wait(), 5)
    assert failures("engine-m") == 1 and sup.fatal[0] == "engine-m"


def test_the_failure_counter_reaches_the_monitors_metrics_endpoint():
    from prometheus_client.parser import text_string_to_metric_families

    from llmserve.monitor.alerts import AlertEngine
    from llmserve.monitor.otlp import MetricsIngest
    from llmserve.monitor.prometheus import StoreCollector, make_registry, render
    from llmserve.monitor.store import MetricStore
    from tests.unit.monitor.helpers import FakeClock, sdk_meter

    meter, export = sdk_meter("worker")
    sup = Supervisor("worker", meter=meter)
    sup.count("intake", InjectedFailure("boom"), "fatal")
    store = MetricStore(clock=FakeClock())
    MetricsIngest(store).ingest(export())
    registry = make_registry(StoreCollector(store, AlertEngine((), store, lambda n: None), lambda: None, 30))
    samples = [s for f in text_string_to_metric_families(render(registry).decode()) for s in f.samples
               if s.name == "llmserve_background_task_failures_total"]
    assert [(s.labels["service"], s.labels["task"], s.value) for s in samples] == [("worker", "intake", 1.0)]
