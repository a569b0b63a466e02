"""The monitor's supervised loops with an injected exception: a failed evaluation round is
counted and evaluation goes on; a failed registry poll is counted and the poll restarts."""

from __future__ import annotations

from llmserve.monitor.registry import RegistryProbe
from tests.integration.monitor.harness import running_monitor
from tests.support.polling import wait_for
from tests.support.supervision import count_failures, fail_once, fail_once_sync, failures_from_start


async def test_a_failed_evaluation_round_is_counted_and_evaluation_goes_on():
    async with running_monitor() as monitor:
        core = monitor.service.core
        failures = count_failures(monitor.service.supervisor)
        core.latest = None
        core.tick = fail_once_sync(core.tick)
        await wait_for(lambda: failures("evaluation") == 1)
        core.latest = None
        await wait_for(lambda: core.latest is not None)  # the next round ran
        assert monitor.app.exit_code == 0


async def test_a_failed_registry_poll_is_counted_and_restarted(redis_url, monkeypatch):
    polls = []
    original = RegistryProbe.poll

    async def counted(self):
        polls.append(1)
        return await original(self)

    monkeypatch.setattr(RegistryProbe, "poll", fail_once(counted))
    failures = failures_from_start(monkeypatch)  # the first poll runs as the monitor starts
    async with running_monitor(registry_poll_s=0.05, redis_url=redis_url) as monitor:
        supervisor = monitor.service.supervisor
        await wait_for(lambda: failures("monitor", "registry") == 1)
        await wait_for(lambda: len(polls) >= 3)  # polling again after the backoff
        assert supervisor.running("registry") and monitor.app.exit_code == 0
