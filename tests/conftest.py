"""Fixtures every tier shares: a private redis-server (never the system one on :6379)."""

from __future__ import annotations

import os

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


def pytest_collection_modifyitems(config, items):
    """`exhaustive` runs (every shipped schema, 50 LangChain prompts, ...) take many minutes of
    real-model time: `make test` keeps to its budget with their sampled versions, and
    `make test-exhaustive` runs them whole."""
    if os.environ.get("LLMSERVE_EXHAUSTIVE") == "1":
        return
    skip = pytest.mark.skip(reason="exhaustive run: set LLMSERVE_EXHAUSTIVE=1 (make test-exhaustive)")
    for item in items:
        if "exhaustive" in item.keywords:
            item.add_marker(skip)
