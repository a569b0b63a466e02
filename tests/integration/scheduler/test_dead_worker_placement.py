"""Attempts count real deaths: no dispatch lands on a worker whose heartbeat is gone (a stale
registry view cannot re-dispatch to it), and recovery gives back an entry the dead worker never
read without charging it an attempt."""

from __future__ import annotations

import json

import redis.asyncio as aioredis

from llmserve.common import redis_keys as keys
from llmserve.common.streams import ensure_group, read_group
from llmserve.common.tokensink.client import SinkClient
from llmserve.common.v1 import work_pb2
from llmserve.scheduler.core import pending_from_entry
from llmserve.scheduler.dispatch import DISPATCHED, WORKER_GONE, Dispatcher
from llmserve.scheduler.recovery import WorkerRecovery
from tests.support.workload import MODEL, enqueue, work_item


async def held(r: aioredis.Redis, request_id: str):
    await enqueue(r, [work_item(request_id)])
    stream = keys.request_stream(MODEL)
    await ensure_group(r, stream, keys.SCHEDULER_GROUP)
    (entry,) = await read_group(r, keys.SCHEDULER_GROUP, "s0", [stream], count=1, block_ms=10)
    return pending_from_entry(entry)


async def test_no_dispatch_to_a_worker_whose_heartbeat_is_gone(redis_url):
    r = aioredis.Redis.from_url(redis_url)
    try:
        dispatcher = Dispatcher(r)
        p = await held(r, "req")
        assert await dispatcher.dispatch(p, "dead") == WORKER_GONE
        assert await r.xlen(keys.worker_stream("dead")) == 0
        pending = await r.xpending(keys.request_stream(MODEL), keys.SCHEDULER_GROUP)
        assert pending["pending"] == 1  # still held: placed on a live worker next
        await r.set(keys.heartbeat_key("live"), json.dumps({"worker_id": "live", "address": ""}))
        assert await dispatcher.dispatch(p, "live") == DISPATCHED
        assert await r.xlen(keys.worker_stream("live")) == 1
    finally:
        await r.aclose()


async def test_recovery_requeues_an_unread_entry_without_charging_an_attempt(redis_url):
    r = aioredis.Redis.from_url(redis_url)
    sink = SinkClient("s0")
    try:
        stream = keys.worker_stream("dead")
        await ensure_group(r, stream, keys.WORKER_GROUP)
        for rid in ("read", "unread"):
            await r.xadd(stream, {keys.PAYLOAD_FIELD: work_item(rid).SerializeToString()})
        await r.hset(keys.request_key("unread"), mapping={"state": "dispatched", "attempt": 1})
        await read_group(r, keys.WORKER_GROUP, "dead", [stream], count=1, block_ms=10)  # it read one
        await r.sadd(keys.WORKERS_SET, "dead")
        await WorkerRecovery(r, sink, "s0").recover(["dead"])
        requeued = await r.xrange(keys.request_stream(MODEL))
        items = [work_pb2.WorkItem.FromString(f[keys.PAYLOAD_FIELD.encode()]) for _, f in requeued]
        assert [(i.request_id, i.attempt) for i in items] == [("unread", 1)]
        # The read one was fenced at its (absent) gateway: nobody waits for it, so it is dropped.
        assert await r.hget(keys.request_key("read"), "state") == b"abandoned"
        assert await r.xlen(stream) == 0 and not await r.sismember(keys.WORKERS_SET, "dead")
    finally:
        await sink.close()
        await r.aclose()
