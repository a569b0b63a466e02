"""The worker→gateway token-sink link loses and repeats nothing across reconnects.

Real gRPC servers on loopback. The gateway side is the real TokenSinkServicer; a wrapper makes
the first connects fail the way a restarting or flapping gateway does.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest

from llmserve.cli.redis_server import RedisServer
from llmserve.common import redis_client
from llmserve.common.internal_auth import Caller, _caller
from llmserve.common.redis_keys import request_key
from llmserve.common.tokensink.client import OutChunk, SinkClient
from llmserve.common.tokensink.v1 import token_sink_pb2 as pb
from llmserve.common.tokensink.v1 import token_sink_pb2_grpc
from llmserve.gateway.servicer import TokenSinkServicer
from llmserve.gateway.streams import sink_acks
from llmserve.gateway.streams.inflight import InflightRegistry, TokenEvent
from llmserve.gateway.streams.sink_authz import SinkAuthorizer


class FlakySink(token_sink_pb2_grpc.TokenSinkServiceServicer):
    """Refuses the first `failures` StreamTokens calls, then serves them with the real servicer."""

    def __init__(self, inflight: InflightRegistry, failures: int, read_first: bool):
        self.real = TokenSinkServicer(inflight)
        self.failures = failures
        self.read_first = read_first
        self.calls = 0

    async def StreamTokens(self, request_iterator, context):
        self.calls += 1
        if self.calls <= self.failures:
            if self.read_first:
                await request_iterator.__anext__()  # took a message, then died before processing it
            await context.abort(grpc.StatusCode.UNAVAILABLE, "gateway restarting")
        async for response in self.real.StreamTokens(request_iterator, context):
            yield response

    async def Fence(self, request, context):
        return await self.real.Fence(request, context)


async def _serve(servicer) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    token_sink_pb2_grpc.add_TokenSinkServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def _collect(stream, count: int, timeout: float) -> list[TokenEvent]:
    got = []
    async with asyncio.timeout(timeout):
        while len(got) < count:
            got.append(await stream.events.get())
    return got


@pytest.mark.parametrize("read_first", [False, True], ids=["refused", "died-after-reading"])
async def test_a_sink_that_fails_its_first_5_connects_delivers_10_of_10_in_order(read_first):
    inflight = InflightRegistry()
    stream = inflight.open("r1")
    flaky = FlakySink(inflight, failures=5, read_first=read_first)
    server, address = await _serve(flaky)
    sink = SinkClient("worker-a")
    try:
        for i in range(10):
            sink.send(address, [OutChunk("r1", 1, i, [100 + i], f"t{i}")])
            await asyncio.sleep(0.02)  # messages keep coming while the link reconnects
        got = await _collect(stream, 10, timeout=20)
        assert [(e.index, e.token_ids, e.text) for e in got] == [(i, [100 + i], f"t{i}") for i in range(10)]
        await sink.flush(timeout=5)
        assert not any(link.pending for link in sink._links.values()), "every message acknowledged"
        assert flaky.calls == 6
        await asyncio.sleep(0.2)
        assert stream.events.empty(), "nothing delivered twice"
    finally:
        await sink.close()
        await server.stop(None)


async def test_messages_resent_after_a_reconnect_are_processed_once():
    """Held-back text (a chunk with text but no new token ids) is not idempotent by index:
    only the link's sequence numbers keep a resend from showing it twice."""
    inflight = InflightRegistry()
    stream = inflight.open("r1")
    server, address = await _serve(TokenSinkServicer(inflight))
    messages = [
        pb.StreamTokensRequest(link_id="w/1", seq=1, chunks=[pb.TokenChunk(request_id="r1", attempt=1, index=0,
                                                                              token_ids=[5], text="a")]),
        pb.StreamTokensRequest(link_id="w/1", seq=2, chunks=[pb.TokenChunk(request_id="r1", attempt=1, index=1,
                                                                              text="é")]),
    ]
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = token_sink_pb2_grpc.TokenSinkServiceStub(channel)
            for _ in range(2):  # the same two messages on two streams, as after a lost ack
                call = stub.StreamTokens()
                for m in messages:
                    await call.write(m)
                acked = 0
                async with asyncio.timeout(5):
                    while acked < 2:
                        acked = max(acked, (await call.read()).acked_seq)
                await call.done_writing()
        got = []
        while not stream.events.empty():
            got.append(stream.events.get_nowait())
        assert [e.text for e in got] == ["a", "é"]
    finally:
        await server.stop(None)


async def test_a_restarted_gateway_answers_unknown_requests_with_a_cancel():
    inflight = InflightRegistry()  # the new process: it knows no request
    server, address = await _serve(TokenSinkServicer(inflight))
    cancelled: list[str] = []
    sink = SinkClient("worker-a", on_cancel=cancelled.append)
    try:
        sink.send(address, [OutChunk("lost", 3, 7, [1], "x")])
        async with asyncio.timeout(5):
            while not cancelled:
                await asyncio.sleep(0.01)
        assert cancelled == ["lost"]
    finally:
        await sink.close()
        await server.stop(None)


class AsWorker(token_sink_pb2_grpc.TokenSinkServiceServicer):
    """The real servicer with its authorizer, called as an authenticated worker (what the
    internal-auth interceptor sets before a servicer runs)."""

    def __init__(self, real: TokenSinkServicer, worker_id: str):
        self.real, self.worker_id = real, worker_id

    async def StreamTokens(self, request_iterator, context):
        _caller.set(Caller("worker", self.worker_id))
        async for response in self.real.StreamTokens(request_iterator, context):
            yield response


async def test_tokens_that_cannot_be_authorized_while_redis_is_down_are_resent_not_dropped(tmp_path):
    """Redis down means "cannot check the placement now", not "not yours": the message stays
    unacknowledged, and once Redis is back the resend is delivered. (The old code dropped the
    chunks and acknowledged them: the client waited for ever.)"""
    redis = RedisServer(data_dir=tmp_path / "redis").start()
    client = redis_client.connect(redis.url, socket_timeout=1)
    await client.hset(request_key("r1"), "worker", "w1")
    inflight = InflightRegistry()
    stream = inflight.open("r1")
    server, address = await _serve(AsWorker(TokenSinkServicer(inflight, SinkAuthorizer(client)), "w1"))
    sink = SinkClient("w1")
    try:
        redis.stop_process()
        sink.send(address, [OutChunk("r1", 1, 0, [7], "a")])
        await asyncio.sleep(1.0)
        assert stream.events.empty()
        assert sink._links[address].pending, "not acknowledged while unprovable"
        redis.start()  # from this thread: the child dies with the thread that forked it (PDEATHSIG)
        await client.hset(request_key("r1"), "worker", "w1")  # no persistence: the dispatch record again
        got = await _collect(stream, 1, timeout=15)
        assert [(e.index, e.token_ids, e.text) for e in got] == [(0, [7], "a")]
        await sink.flush(timeout=5)
        assert not sink._links[address].pending
    finally:
        await sink.close()
        await server.stop(None)
        await client.aclose()
        redis.stop()


async def test_acknowledgements_coalesce_and_cancellations_do_not_wait(monkeypatch):
    """A worker streams a message per engine step: the gateway acknowledges several with one
    response (not a gRPC message back per token), acknowledges the last one too, and a
    cancellation (a chunk nobody waits for) goes out without waiting for more acks."""
    monkeypatch.setattr(sink_acks, "ACK_DELAY_S", 1.0)  # wide, so the timings below are not close
    inflight = InflightRegistry()
    inflight.open("r1")
    server, address = await _serve(TokenSinkServicer(inflight))

    def message(seq: int, request_id: str = "r1") -> pb.StreamTokensRequest:
        return pb.StreamTokensRequest(link_id="w/1", seq=seq, chunks=[
            pb.TokenChunk(request_id=request_id, attempt=1, index=seq - 1, token_ids=[seq], text="x")])

    try:
        async with grpc.aio.insecure_channel(address) as channel:
            call = token_sink_pb2_grpc.TokenSinkServiceStub(channel).StreamTokens()
            responses: list[pb.StreamTokensResponse] = []

            async def read() -> None:
                async for response in call:
                    responses.append(response)

            reader = asyncio.create_task(read())
            for seq in range(1, 21):
                await call.write(message(seq))
                await asyncio.sleep(0.005)  # a fast engine step
            sent = asyncio.get_running_loop().time()
            await call.write(message(21, request_id="nobody-waits"))
            async with asyncio.timeout(10):
                while not any(r.cancel_request_ids for r in responses):
                    await asyncio.sleep(0.001)
            assert asyncio.get_running_loop().time() - sent < 0.5, "the cancellation waited for acks"
            async with asyncio.timeout(10):
                while max((r.acked_seq for r in responses), default=0) < 21:
                    await asyncio.sleep(0.01)
            assert len(responses) < 10, f"{len(responses)} responses for 21 messages"
            held = len(responses)
            for seq in (22, 23):  # the last messages of a stream: their ack comes when the delay is up
                await call.write(message(seq))
            async with asyncio.timeout(10):
                while max(r.acked_seq for r in responses) < 23:
                    await asyncio.sleep(0.01)
            assert len(responses) <= held + 1
            await call.done_writing()
            await reader
    finally:
        await server.stop(None)
