"""A gateway's TokenSinkService stand-in that keeps every chunk it is sent (worker tests)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc

from llmserve.common.tokensink.v1 import token_sink_pb2, token_sink_pb2_grpc


class RecordingSink(token_sink_pb2_grpc.TokenSinkServiceServicer):
    """Keeps every chunk; `address` is where workers send them (set once serving)."""

    def __init__(self):
        self.chunks: list[token_sink_pb2.TokenChunk] = []
        self.address = ""

    async def StreamTokens(self, request_iterator, context):
        async for request in request_iterator:
            self.chunks.extend(request.chunks)
        return
        yield  # an async generator: the stream answers nothing

    def of(self, request_id: str, attempt: int | None = None) -> list[token_sink_pb2.TokenChunk]:
        return [c for c in self.chunks if c.request_id == request_id and attempt in (None, c.attempt)]

    def outcome(self, request_id: str) -> int | None:
        ends = [c.outcome for c in self.of(request_id) if c.outcome]
        return ends[-1] if ends else None

    def tokens(self, request_id: str, attempt: int | None = None) -> list[tuple[int, int]]:
        """(index, token) of every token delivered for the request, in arrival order."""
        return [(c.index + i, t) for c in self.of(request_id, attempt) for i, t in enumerate(c.token_ids)]


@contextlib.asynccontextmanager
async def recording_sink() -> AsyncIterator[RecordingSink]:
    sink = RecordingSink()
    server = grpc.aio.server()
    token_sink_pb2_grpc.add_TokenSinkServiceServicer_to_server(sink, server)
    sink.address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    await server.start()
    try:
        yield sink
    finally:
        await server.stop(None)
