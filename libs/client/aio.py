"""The asyncio client (grpc.aio): the same API as `Client`, awaited.

    async with AsyncClient("127.0.0.1:50051", api_key="...") as client:
        async for piece in client.stream(model, "Once upon a time"):
            ...

Create it inside the running event loop: grpc.aio channels belong to the loop that made them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import grpc

from llmserve.gateway.v1 import generation_pb2 as pb
from llmserve.gateway.v1 import generation_pb2_grpc

from .auth import Auth
from .balancer import Balancing
from .base import DEFAULT_OPTIONS, ClientBase
from .retry import CallPlan, RetryPolicy
from .types import Completion, Delivered, StreamPiece, to_completion, to_piece


class AsyncClient(ClientBase):
    """Async client with the retries, deadlines and load balancing of `Client`."""

    def __init__(
        self,
        address: str | Sequence[str],
        api_key: str | None = None,
        timeout: float | None = 120.0,
        *,
        auth: Auth | None = None,
        retry: RetryPolicy | None = None,
        balancing: Balancing | None = None,
        weights: Sequence[float] | None = None,
        eject_cooldown_s: float = 2.0,
        options: Sequence[tuple[str, object]] = DEFAULT_OPTIONS,
    ):
        super().__init__(
            address, api_key, timeout, auth=auth, retry=retry, balancing=balancing, weights=weights,
            eject_cooldown_s=eject_cooldown_s, make_channel=lambda a: _channel(a, options),
        )

    async def generate(
        self, model: str, prompt: str | None = None, *, messages=None, timeout: float | None = None, **params
    ) -> Completion:
        request, plan = self._generation(model, prompt, messages, timeout, params)
        return to_completion(await self._unary(plan, "Generate", request))

    async def stream(
        self, model: str, prompt: str | None = None, *, messages=None, timeout: float | None = None, **params
    ) -> AsyncIterator[StreamPiece]:
        """Pieces as the tokens are made. Retried until the first piece arrives; after it, a stream
        its gateway broke (UNAVAILABLE) re-attaches through another address, gap-free (retry.py)."""
        request, plan = self._generation(model, prompt, messages, timeout, params)
        plan.streaming = True
        delivered = Delivered()  # completion tokens the caller has: a re-attach continues from here
        while True:
            endpoint, call_args = self._attempt(plan, request)
            if plan.resume_from is not None:
                request.resume_from_index = plan.resume_from
            call = endpoint.stub.GenerateStream(request, **call_args)
            try:
                async for message in call:
                    if delivered.fresh(message):  # never a repeat, whatever a gateway resends
                        yield to_piece(message)
                plan.succeeded(endpoint)
                return
            except grpc.RpcError as e:
                delay = plan.after_error(e, endpoint, delivered.total)
            finally:
                call.cancel()
            await asyncio.sleep(delay)

    async def list_models(self, timeout: float | None = None) -> list[pb.ModelInfo]:
        response = await self._unary(self._plan("-", timeout), "ListModels", pb.ListModelsRequest())
        return list(response.models)

    async def _unary(self, plan: CallPlan, method: str, request):
        """`await stub.<method>(request)`, retried as `plan` says."""
        while True:
            endpoint, call_args = self._attempt(plan, request)
            try:
                response = await getattr(endpoint.stub, method)(request, **call_args)
            except grpc.RpcError as e:
                await asyncio.sleep(plan.after_error(e, endpoint))
                continue
            plan.succeeded(endpoint)
            return response

    async def close(self) -> None:
        for channel in self.balancer.channels():
            await channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


def _channel(address: str, options) -> tuple[grpc.aio.Channel, generation_pb2_grpc.GenerationServiceStub]:
    channel = grpc.aio.insecure_channel(address, options=list(options))
    return channel, generation_pb2_grpc.GenerationServiceStub(channel)
