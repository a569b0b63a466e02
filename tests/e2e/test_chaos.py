"""kill -9 of a worker in the middle of streams: every stream completes with the uninterrupted
greedy text, each token index exactly once.

The must-show is 20 kills in a row (`make test-exhaustive`); `make test` runs the same check with
5, to keep its budget: enough that replacement workers are killed in turn and every prompt is
streamed through a kill."""

from __future__ import annotations

import pytest

from llmserve.cli.redis_server import RedisServer
from llmserve.cli.suite import LocalSuite, Ports
from tests.support.chaos import CHAOS_ENV, ChaosReport, chaos_round, reference_texts

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _streams_survive_worker_kills(tmp_path, kills: int) -> None:
    with RedisServer() as redis:
        suite = LocalSuite(ports=Ports.free(), redis_url=redis.url, log_dir=tmp_path, with_monitor=False,
                           workers=3, env=CHAOS_ENV)
        try:
            suite.start(timeout=240)
            references = reference_texts(suite)
            report = ChaosReport()
            for round_no in range(kills):
                chaos_round(suite, references, report, round_no)
            print("chaos:", report.summary())
            assert report.kills == kills
            assert report.failures == []
        finally:
            suite.stop()


@pytest.mark.timeout(600)
def test_streams_survive_5_worker_kills(tmp_path):
    _streams_survive_worker_kills(tmp_path, 5)


@pytest.mark.exhaustive
@pytest.mark.timeout(900)
def test_streams_survive_20_worker_kills(tmp_path):
    _streams_survive_worker_kills(tmp_path, 20)
