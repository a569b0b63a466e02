"""kill -9 of a worker in the middle of streams, 20 times: every stream completes with the
uninterrupted greedy text, each token index exactly once."""

from __future__ import annotations

import pytest

from llmserve.cli.redis_server import RedisServer
from llmserve.cli.suite import LocalSuite, Ports
from tests.support.chaos import CHAOS_ENV, ChaosReport, chaos_round, reference_texts

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
KILLS = 20


@pytest.mark.timeout(900)
def test_streams_survive_20_worker_kills(tmp_path):
    with RedisServer() as redis:
        suite = LocalSuite(ports=Ports.free(), redis_url=redis.url, log_dir=tmp_path, with_monitor=False,
                           workers=3, env=CHAOS_ENV)
        try:
            suite.start(timeout=240)
            references = reference_texts(suite)
            report = ChaosReport()
            for round_no in range(KILLS):
                chaos_round(suite, references, report, round_no)
            print("chaos:", report.summary())
            assert report.kills == KILLS
            assert report.failures == []
        finally:
            suite.stop()
