"""A worker stopped while Redis is down drains and stops cleanly (it raised ConnectionError out
of its drain: the stop then failed, with running requests left to the drain bound)."""

from __future__ import annotations

from llmserve.cli.redis_server import RedisServer
from tests.support.scripted_engine import ScriptedEngine
from tests.support.stack import running_worker


async def test_a_worker_drains_with_redis_down(tmp_path):
    redis = RedisServer(data_dir=tmp_path / "redis").start()
    try:
        async with running_worker(redis.url, ScriptedEngine(), "w0") as app:
            redis.stop_process()
        assert app.service.runtime.draining
    finally:
        redis.stop()
