"""Fixtures every tier shares: a private redis-server (never the system one on :6379)."""

from __future__ import annotations

import pytest
import redis

from llmserve.cli.redis_server import RedisServer


@pytest.fixture(scope="session")
def redis_server():
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server) -> str:
    """A clean database on the session's private Redis."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture(scope="session")
def model_path():
    from llmserve.common.model_store import DEFAULT_MODEL, resolve_model

    return resolve_model(DEFAULT_MODEL)
