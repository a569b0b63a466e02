"""The synchronous client over `llmserve.gateway.v1.GenerationService`.

    with Client("10.0.0.1:50051,10.0.0.2:50051", api_key="...") as client:
        for piece in client.stream(model, messages=[{"role": "user", "content": "hi"}]):
            print(piece.text, end="")

Retries and failover: see `retry.py`; load balancing: see `balancer.py`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

import grpc

from llmserve.gateway.v1 import generation_pb2 as pb
from llmserve.gateway.v1 import generation_pb2_grpc

from .auth import Auth, resolve_auth
from .balancer import Balancer, Balancing, parse_addresses
from .retry import CallPlan, RetryPolicy
from .types import Completion, StreamPiece, build_request, to_completion, to_piece

DEFAULT_OPTIONS = (
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    # Fail fast on a dead address (then fail over) instead of backing off for up to 2 minutes.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.keepalive_time_ms", 30_000),
)


class Client:
    """Sync client: `Client(address(es), api_key=...)`; a context manager closes the channels.

    `address` is "host:port", a comma-separated list, or a list (`"host:port=3"` weighs an
    address; or pass `weights`). `timeout` is each call's whole deadline, retries included.
    """

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

    @property
    def stub(self) -> generation_pb2_grpc.GenerationServiceStub:
        """The first endpoint's stub (for callers that want the raw API)."""
        return self.balancer.endpoints[0].stub

    def generate(
        self, model: str, prompt: str | None = None, *, messages=None, timeout: float | None = None, **params
    ) -> Completion:
        request = build_request(model, prompt, messages, **params)
        plan = CallPlan(self.retry, self.balancer, request.request_id, _pick(timeout, self.timeout))
        while True:
            endpoint, remaining = plan.next_attempt()
            request.request_id = plan.request_id
            try:
                response = endpoint.stub.Generate(request, metadata=self.auth.metadata(), timeout=remaining)
            except grpc.RpcError as e:
                time.sleep(plan.after_error(e, endpoint))
                continue
            plan.succeeded(endpoint)
            return to_completion(response)

    def stream(
        self, model: str, prompt: str | None = None, *, messages=None, timeout: float | None = None, **params
    ) -> Iterator[StreamPiece]:
        """Pieces as the tokens are made. Retried only until the first piece arrives."""
        request = build_request(model, prompt, messages, **params)
        plan = CallPlan(self.retry, self.balancer, request.request_id, _pick(timeout, self.timeout))
        while True:
            endpoint, remaining = plan.next_attempt()
            request.request_id = plan.request_id
            call = endpoint.stub.GenerateStream(request, metadata=self.auth.metadata(), timeout=remaining)
            delivered = 0
            try:
                for message in call:
                    delivered += 1
                    yield to_piece(message)
                plan.succeeded(endpoint)
                return
            except grpc.RpcError as e:
                delay = plan.after_error(e, endpoint, delivered)
            finally:
                call.cancel()  # the caller stopped early (or it failed): the gateway cancels the work
            time.sleep(delay)

    def list_models(self, timeout: float | None = None) -> list[pb.ModelInfo]:
        plan = CallPlan(self.retry, self.balancer, "-", _pick(timeout, self.timeout))
        while True:
            endpoint, remaining = plan.next_attempt()
            try:
                response = endpoint.stub.ListModels(
                    pb.ListModelsRequest(), metadata=self.auth.metadata(), timeout=remaining
                )
            except grpc.RpcError as e:
                time.sleep(plan.after_error(e, endpoint))
                continue
            plan.succeeded(endpoint)
            return list(response.models)

    def close(self) -> None:
        for channel in self.balancer.channels():
            channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _channel(address: str, options) -> tuple[grpc.Channel, generation_pb2_grpc.GenerationServiceStub]:
    channel = grpc.insecure_channel(address, options=list(options))
    return channel, generation_pb2_grpc.GenerationServiceStub(channel)


def _pick(timeout: float | None, default: float | None) -> float | None:
    return timeout if timeout is not None else default
