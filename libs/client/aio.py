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

from .auth import Auth, resolve_auth
from .balancer import Balancer, Balancing, parse_addresses
from .client import DEFAULT_OPTIONS, _pick
from .retry import CallPlan, RetryPolicy
from .types import Completion, StreamPiece, build_request, to_completion, to_piece


class AsyncClient:
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
        parsed = parse_addresses(address, weights)
        weighted = weights is not None or any(w != 1.0 for _, w in parsed)
        self.balancer = Balancer(
            parsed,
            lambda a: _channel(a, options),
            balancing or ("weighted" if weighted else "round_robin"),
            eject_cooldown_s,
        )
        self.auth = resolve_auth(api_key, auth)
        self.retry = retry or RetryPolicy()
        self.timeout = timeout

    async def generate(
        self, model: str, prompt: str | None = None, *, messages=None, timeout: float | None = None, **params
    ) -> Completion:
        request = build_request(model, prompt, messages, **params)
        plan = CallPlan(self.retry, self.balancer, request.request_id, _pick(timeout, self.timeout))
        while True:
            endpoint, remaining = plan.next_attempt()
            request.request_id = plan.request_id
            try:
                response = await endpoint.stub.Generate(
                    request, metadata=self.auth.metadata(), timeout=remaining
                )
            except grpc.RpcError as e:
                await asyncio.sleep(plan.after_error(e, endpoint))
                continue
            plan.succeeded(endpoint)
            return to_completion(response)

    async def stream(
        self, model: str, prompt: str | None = None, *, messages=None, timeout: float | None = None, **params
    ) -> AsyncIterator[StreamPiece]:
        """Pieces as the tokens are made. Retried only until the first piece arrives."""
        request = build_request(model, prompt, messages, **params)
        plan = CallPlan(self.retry, self.balancer, request.request_id, _pick(timeout, self.timeout))
        while True:
            endpoint, remaining = plan.next_attempt()
            request.request_id = plan.request_id
            call = endpoint.stub.GenerateStream(request, metadata=self.auth.metadata(), timeout=remaining)
            delivered = 0
            try:
                async for message in call:
                    delivered += 1
                    yield to_piece(message)
                plan.succeeded(endpoint)
                return
            except grpc.RpcError as e:
                delay = plan.after_error(e, endpoint, delivered)
            finally:
                call.cancel()
            await asyncio.sleep(delay)

    async def list_models(self, timeout: float | None = None) -> list[pb.ModelInfo]:
        plan = CallPlan(self.retry, self.balancer, "-", _pick(timeout, self.timeout))
        while True:
            endpoint, remaining = plan.next_attempt()
            try:
                response = await endpoint.stub.ListModels(
                    pb.ListModelsRequest(), metadata=self.auth.metadata(), timeout=remaining
                )
            except grpc.RpcError as e:
                await asyncio.sleep(plan.after_error(e, endpoint))
                continue
            plan.succeeded(endpoint)
            return list(response.models)

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
