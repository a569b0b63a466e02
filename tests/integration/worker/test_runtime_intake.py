"""The worker's intake: work read from its stream starts at once; a request cancelled after
dispatch but before the worker read it still ends CANCELLED, and expired work never runs."""

from __future__ import annotations

import time

import grpc
import redis.asyncio as aioredis

from llmserve.common import redis_keys as keys
from llmserve.common.tokensink.v1 import token_sink_pb2, token_sink_pb2_grpc
from tests.support.polling import wait_for
from tests.support.scripted_engine import ScriptedEngine
from tests.support.stack import running_worker
from tests.support.workload import work_item


class RecordingSink(token_sink_pb2_grpc.TokenSinkServiceServicer):
    """Stands in for a gateway's TokenSinkService: keeps every chunk it is sent."""

    def __init__(self):
        self.chunks: list[token_sink_pb2.TokenChunk] = []

    async def StreamTokens(self, request_iterator, context):
        async for request in request_iterator:
            self.chunks.extend(request.chunks)
        return
        yield  # an async generator: the stream answers nothing

    def outcome(self, request_id: str) -> int | None:
        ends = [c.outcome for c in self.chunks if c.request_id == request_id and c.outcome]
        return ends[-1] if ends else None


async def test_cancelled_before_read_ends_cancelled_and_expired_work_never_runs(redis_url):
    sink = RecordingSink()
    server = grpc.aio.server()
    token_sink_pb2_grpc.add_TokenSinkServiceServicer_to_server(sink, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    engine = ScriptedEngine(step_delay_s=0.01)
    r = aioredis.Redis.from_url(redis_url)
    try:
        async with running_worker(redis_url, engine, "w0"):
            stream = keys.worker_stream("w0")
            reply_to = f"127.0.0.1:{port}"
            await r.set(keys.cancel_key("gone"), 1)
            items = [work_item("gone", max_tokens=500, reply_to=reply_to),
                     work_item("late", max_tokens=5, reply_to=reply_to, deadline_ms=int(time.time() * 1000) - 1),
                     work_item("kept", max_tokens=5, reply_to=reply_to)]
            for item in items:
                await r.xadd(stream, {keys.PAYLOAD_FIELD: item.SerializeToString()})
            await wait_for(lambda: all(sink.outcome(i) for i in ("gone", "late", "kept")))
            assert sink.outcome("gone") == token_sink_pb2.OUTCOME_CANCELLED
            assert sink.outcome("late") == token_sink_pb2.OUTCOME_DEADLINE_EXCEEDED
            assert sink.outcome("kept") == token_sink_pb2.OUTCOME_LENGTH
            assert "late" not in engine.seen  # expired work never reaches the engine
            gone_tokens = sum(len(c.token_ids) for c in sink.chunks if c.request_id == "gone")
            assert gone_tokens < 500  # stopped, not run to its end
            await wait_for(lambda: not engine.has_unfinished())
    finally:
        await r.aclose()
        await server.stop(None)
