"""The worker's side of re-attach (services/worker/reattach.py) against real Redis and two
real gateway token sinks on loopback: the switch delivers each index once at the new gateway
and ends the old gateway's stream; orphans are cancelled only after the grace, and never when
the record names a new owner; a finished result is stored with its TTL."""

from __future__ import annotations

import asyncio

import grpc
import pytest
import redis.asyncio as aioredis

from llmserve.common import redis_keys as keys
from llmserve.common.errors import Cancelled
from llmserve.common.gateways import register_gateway
from llmserve.common.tokensink.client import OutChunk, SinkClient
from llmserve.common.tokensink.v1 import token_sink_pb2, token_sink_pb2_grpc
from llmserve.gateway.servicer import TokenSinkServicer
from llmserve.gateway.streams.inflight import FinishEvent, InflightRegistry, TokenEvent
from llmserve.gateway.streams.reattach import chunk_from_pb
from llmserve.worker.active import Active
from llmserve.worker.reattach import ReplyRouter


async def _sink() -> tuple[grpc.aio.Server, str, InflightRegistry]:
    inflight = InflightRegistry()
    server = grpc.aio.server()
    token_sink_pb2_grpc.add_TokenSinkServiceServicer_to_server(TokenSinkServicer(inflight), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}", inflight


async def _events(stream, count: int) -> list:
    async with asyncio.timeout(10):
        return [await stream.events.get() for _ in range(count)]


@pytest.fixture
async def world(redis_url):
    r = aioredis.Redis.from_url(redis_url)
    old, new = await _sink(), await _sink()
    sink = SinkClient("w1")
    cancelled: list[str] = []
    active: dict[str, Active] = {}

    def cancel(rid: str) -> bool:
        cancelled.append(rid)
        return rid in active

    router = ReplyRouter(r, sink, "w1", active, cancel, grace_s=0.5, result_ttl_s=60)
    yield r, old, new, sink, router, active, cancelled
    await sink.close()
    for server, _, _ in (old, new):
        await server.stop(None)
    await r.aclose()


def _made(sink: SinkClient, active: Active, rid: str, start: int, end: int) -> None:
    for i in range(start, end):
        chunk = OutChunk(rid, 1, i, [100 + i], f"t{i}")
        active.sent.append(chunk)
        sink.send(active.reply_to, [chunk])


async def test_a_switch_delivers_each_index_once_and_ends_the_old_stream(world):
    r, (_, old_address, old_inflight), (_, new_address, new_inflight), sink, router, active, _ = world
    old_stream = old_inflight.open("r1")
    active["r1"] = Active("e1", old_address, 1, 0, tenant="t")
    _made(sink, active["r1"], "r1", 0, 3)
    assert [e.index for e in await _events(old_stream, 3)] == [0, 1, 2]

    new_stream = new_inflight.open("r1", replace=True)
    new_stream.next_index = 2  # the client has two tokens
    assert router.reattach("r1", new_address, 2)
    _made(sink, active["r1"], "r1", 3, 5)
    got = await _events(new_stream, 3)
    assert [(e.index, e.token_ids, e.text) for e in got] == [(2, [102], "t2"), (3, [103], "t3"), (4, [104], "t4")]
    assert new_stream.delivered_token_ids == [100, 101, 102, 103, 104]  # a later fence answers all of it
    ended = await _events(old_stream, 1)
    assert isinstance(ended[0], Cancelled)
    assert not router.accepts_cancel("r1", old_address) and router.accepts_cancel("r1", new_address)
    assert not router.reattach("gone", new_address, 0)


async def test_orphans_are_cancelled_after_the_grace_unless_the_record_names_a_new_owner(world):
    r, (_, alive, _), (_, moved_to, _), _, router, active, cancelled = world
    await register_gateway(r, alive, 60_000)
    dead = "127.0.0.1:1"
    active["kept"] = Active("e1", alive, 1, 0)
    active["orphan"] = Active("e2", dead, 1, 0)
    active["moved"] = Active("e3", dead, 1, 0)
    await r.hset(keys.request_key("orphan"), mapping={"gateway": dead})
    await r.hset(keys.request_key("moved"), mapping={"gateway": moved_to})
    assert await router.stop_orphans() == []  # gone, but not for the grace yet
    assert active["moved"].reply_to == moved_to  # followed the record at once
    await asyncio.sleep(0.6)
    assert await router.stop_orphans() == ["orphan"]
    assert cancelled == ["orphan"]


async def test_a_finished_result_is_stored_with_its_ttl_and_the_record_says_finished(world):
    r, (_, address, _), _, sink, router, active, _ = world
    await r.hset(keys.request_key("r2"), mapping={"gateway": address, "state": "dispatched"})
    done = Active("e1", address, 1, 0, tenant="acme")
    _made(sink, done, "r2", 0, 2)
    done.sent.append(OutChunk("r2", 1, 2, [], "", outcome="stop", prompt_tokens=5, completion_tokens=2))
    router.finished("r2", done)
    assert router.reattach("r2", address, 0)  # between the finish and the write: still resent
    async with asyncio.timeout(5):
        while router.recent:
            await asyncio.sleep(0.01)
    stored = token_sink_pb2.StoredResult.FromString(await r.get(keys.result_key("r2")))
    assert [c.index for c in stored.chunks] == [0, 1, 2] and stored.tenant == "acme"
    assert 0 < await r.pttl(keys.result_key("r2")) <= 60_000
    assert await r.hget(keys.request_key("r2"), "state") == b"finished"
    assert not await r.exists(keys.request_key("never"))
    # Replayed into a re-attached stream, it gives exactly the missing part and the end.
    inflight = InflightRegistry()
    stream = inflight.open("r2")
    stream.next_index = 1
    for c in stored.chunks:
        stream.offer(chunk_from_pb(c))
    got = await _events(stream, 2)
    assert isinstance(got[0], TokenEvent) and got[0].index == 1 and isinstance(got[1], FinishEvent)
