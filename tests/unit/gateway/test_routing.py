"""The gateway's split hash and alias cache (routing.py), without Redis."""

from __future__ import annotations

import asyncio
import collections

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from llmserve.common.models.registry import Alias
from llmserve.gateway.routing.router import TtlCache, choose_version, split_bucket


def alias(split: dict[str, float], version: str = "v1") -> Alias:
    return Alias("active", version, 0.0, split)


def shares(a: Alias, keys) -> dict[str, float]:
    counts = collections.Counter(choose_version("smol", a, k) for k in keys)
    return {v: n / len(keys) for v, n in counts.items()}


REQUEST_IDS = [f"req-{i}" for i in range(100_000)]


def test_bucket_is_uniform_and_stable():
    buckets = [split_bucket("smol", k) for k in REQUEST_IDS]
    assert all(0 <= b < 100 for b in buckets)
    deciles = collections.Counter(int(b // 10) for b in buckets)
    assert all(9_500 < deciles[d] < 10_500 for d in range(10)), deciles
    assert split_bucket("smol", "tenant-a") == split_bucket("smol", "tenant-a")
    # the model name is mixed in: one key lands in different buckets for different models
    assert len({split_bucket(f"m{i}", "tenant-a") for i in range(20)}) > 15


@pytest.mark.parametrize("percent", [1, 20, 50, 99])
def test_split_shares_match_the_percent(percent):
    got = shares(alias({"v2": percent}), REQUEST_IDS)
    assert got.get("v2", 0) == pytest.approx(percent / 100, abs=0.01)
    assert got.get("v1", 0) == pytest.approx(1 - percent / 100, abs=0.01)


def test_several_versions_and_edges():
    got = shares(alias({"v3": 10, "v2": 30}, version="v1"), REQUEST_IDS)
    assert got["v2"] == pytest.approx(0.30, abs=0.01)
    assert got["v3"] == pytest.approx(0.10, abs=0.01)
    assert got["v1"] == pytest.approx(0.60, abs=0.01)
    assert shares(alias({}), REQUEST_IDS[:1000]) == {"v1": 1.0}
    assert shares(alias({"v2": 0}), REQUEST_IDS[:1000]) == {"v1": 1.0}
    assert shares(alias({"v2": 100}), REQUEST_IDS[:1000]) == {"v2": 1.0}


def test_growing_a_canary_keeps_its_users():
    small = {k for k in REQUEST_IDS[:20_000] if choose_version("smol", alias({"v2": 10}), k) == "v2"}
    large = {k for k in REQUEST_IDS[:20_000] if choose_version("smol", alias({"v2": 25}), k) == "v2"}
    assert small and small < large


def test_one_tenant_always_gets_one_version():
    a = alias({"v2": 50})
    for tenant in ("t1", "t2", "acme", "globex"):
        assert len({choose_version("smol", a, tenant) for _ in range(50)}) == 1


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


async def test_ttl_cache_fetches_once_per_ttl_and_shares_concurrent_misses():
    clock, calls = Clock(), []

    async def fetch():
        calls.append(clock.t)
        await asyncio.sleep(0.01)
        return len(calls)

    cache = TtlCache(1.0, clock)
    assert await asyncio.gather(*(cache.get("k", fetch) for _ in range(10))) == [1] * 10
    clock.t = 0.9
    assert await cache.get("k", fetch) == 1
    clock.t = 1.1
    assert await cache.get("k", fetch) == 2
    assert calls == [0.0, 1.1]


async def test_ttl_cache_serves_stale_values_while_redis_fails():
    clock = Clock()
    cache = TtlCache(1.0, clock)

    async def ok():
        return "v1"

    async def down():
        raise RedisConnectionError("gone")

    with pytest.raises(RedisConnectionError):
        await cache.get("other", down)  # nothing cached: the error shows
    assert await cache.get("k", ok) == "v1"
    clock.t = 5.0
    assert await cache.get("k", down) == "v1"
