"""A real gRPC GenerationService whose answers a test scripts, for the client's retry logic.

`FakeGateway(script)` answers call n with `script[n]` (or the last entry): "ok",
("error", code, retry_after_ms), "enqueue-then-unavailable" (records the id, then fails,
as a gateway that dies after the enqueue would), or "break-after-token" (streams one
token, then fails). Ids it has recorded answer ALREADY_EXISTS, like the real gateway.
"""

from __future__ import annotations

import grpc

from llmserve.gateway.v1 import generation_pb2 as pb
from llmserve.gateway.v1 import generation_pb2_grpc


class FakeGateway(generation_pb2_grpc.GenerationServiceServicer):
    def __init__(self, script: list):
        self.script = script
        self.calls: list[tuple[str, str]] = []  # (request_id, authorization)
        self.seen_ids: set[str] = set()
        self.server: grpc.aio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> FakeGateway:
        self.server = grpc.aio.server()
        generation_pb2_grpc.add_GenerationServiceServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.server.stop(None)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _step(self, request, context) -> str:
        auth = dict(context.invocation_metadata()).get("authorization", "")
        self.calls.append((request.request_id, auth))
        action = self.script[min(len(self.calls), len(self.script)) - 1]
        if request.request_id in self.seen_ids:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, "request_id was already used")
        if isinstance(action, tuple):
            _, code, retry_after_ms = action
            if retry_after_ms is not None:
                context.set_trailing_metadata((("retry-after-ms", str(retry_after_ms)),))
            await context.abort(code, "scripted failure")
        self.seen_ids.add(request.request_id)
        if action == "enqueue-then-unavailable":
            await context.abort(grpc.StatusCode.UNAVAILABLE, "gateway lost after enqueue")
        return action

    async def Generate(self, request, context):
        await self._step(request, context)
        return pb.GenerateResponse(
            request_id=request.request_id, model=request.model, text="ok", finish_reason=pb.FINISH_REASON_STOP
        )

    async def GenerateStream(self, request, context):
        action = await self._step(request, context)
        yield pb.GenerateStreamResponse(request_id=request.request_id, index=0, token_ids=[1], text="a")
        if action == "break-after-token":
            await context.abort(grpc.StatusCode.UNAVAILABLE, "connection lost mid-stream")
        yield pb.GenerateStreamResponse(
            request_id=request.request_id,
            index=1,
            token_ids=[2],
            text="b",
            finish_reason=pb.FINISH_REASON_STOP,
        )

    async def ListModels(self, request, context):
        return pb.ListModelsResponse(models=[pb.ModelInfo(name="m", context_length=8)])
