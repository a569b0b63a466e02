"""Who may re-attach, against real Redis: the tenant that made the request only; an unknown id
is NOT_FOUND; a take-over makes this gateway the owner and drops the old one's cancellation,
and a worker that does not hold the request (or has no heartbeat) answers `False`."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from llmserve.common import redis_keys as keys
from llmserve.common.errors import PermissionDenied, RequestNotFound
from llmserve.common.internal_auth import InternalAuth
from llmserve.gateway.streams.reattach import Reattacher


@pytest.fixture
async def reattacher(redis_url):
    r = aioredis.Redis.from_url(redis_url)
    await r.hset(keys.request_key("r1"), mapping={"tenant": "acme", "model": "m", "lease": "L1",
                                                   "gateway": "old:1", "worker": "w9", "state": "dispatched"})
    await r.set(keys.cancel_key("r1"), 1)
    yield r, Reattacher(r, InternalAuth())
    await r.aclose()


async def test_only_the_same_tenant_may_take_a_request_over(reattacher):
    r, re = reattacher
    record = await re.check("r1", "acme")
    assert (record.model, record.lease_id) == ("m", "L1")
    with pytest.raises(PermissionDenied):
        await re.check("r1", "mallory")
    with pytest.raises(PermissionDenied):
        await re.take_over("r1", "mallory", "new:2")
    assert await r.hget(keys.request_key("r1"), "gateway") == b"old:1"  # a refusal changes nothing
    with pytest.raises(RequestNotFound):
        await re.check("nope", "acme")
    with pytest.raises(RequestNotFound):
        await re.take_over("nope", "acme", "new:2")


async def test_a_take_over_owns_the_request_and_drops_the_old_cancellation(reattacher):
    r, re = reattacher
    assert await re.take_over("r1", "acme", "new:2") == ("w9", "dispatched")
    assert await r.hget(keys.request_key("r1"), "gateway") == b"new:2"
    assert not await r.exists(keys.cancel_key("r1"))
    assert await re.redirect("w9", "r1", "new:2", 0) is False  # no heartbeat: its recovery reads the record
    assert await re.stored_result("r1") is None
