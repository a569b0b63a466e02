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

from .auth import Auth
from .balancer import Balancing
from .base import DEFAULT_OPTIONS, ClientBase
from .retry import CallPlan, RetryPolicy
from .types import Completion, Delivered, StreamPiece, to_completion, to_piece


class Client(ClientBase):
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
        super().__init__(
            address, api_key, timeout, auth=auth, retry=retry, balancing=balancing, weights=weights,
            eject_cooldown_s=eject_cooldown_s, make_channel=lambda a: _channel(a, options),
        )

    @property
    def stub(self) -> generation_pb2_grpc.GenerationServiceStub:
        """The first endpoint's stub (for callers that want the raw API)."""
        return self.balancer.endpoints[0].stub

    def generate(
        self, model: str, prompt: str | None = None, *, messages=None, timeout: float | None = None, **params
    ) -> Completion:
        request, plan = self._generation(model, prompt, messages, timeout, params)
        return to_completion(self._unary(plan, "Generate", request))

    def stream(
        self, model: str, prompt: str | None = None, *, messages=None, timeout: float | None = None, **params
    ) -> Iterator[StreamPiece]:
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
                for message in call:
                    if delivered.fresh(message):  # never a repeat, whatever a gateway resends
                        yield to_piece(message)
                plan.succeeded(endpoint)
                return
            except grpc.RpcError as e:
                delay = plan.after_error(e, endpoint, delivered.total)
            finally:
                call.cancel()  # the caller stopped early (or it failed): the gateway cancels the work
            time.sleep(delay)

    def list_models(self, timeout: float | None = None) -> list[pb.ModelInfo]:
        return list(self._unary(self._plan("-", timeout), "ListModels", pb.ListModelsRequest()).models)

    def _unary(self, plan: CallPlan, method: str, request):
        """`stub.<method>(request)`, retried as `plan` says."""
        while True:
            endpoint, call_args = self._attempt(plan, request)
            try:
                response = getattr(endpoint.stub, method)(request, **call_args)
            except grpc.RpcError as e:
                time.sleep(plan.after_error(e, endpoint))
                continue
            plan.succeeded(endpoint)
            return response

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
