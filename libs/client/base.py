"""What the sync and async clients share, none of it I/O: the endpoints and their balancer,
the credentials, the retry policy, and building each call's request and plan.

`Client` and `AsyncClient` only add the calls themselves (blocking or awaited) and the waits
between attempts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from llmserve.gateway.v1 import generation_pb2 as pb

from .auth import Auth, resolve_auth
from .balancer import Balancer, Balancing, Endpoint, parse_addresses
from .retry import CallPlan, RetryPolicy
from .types import build_request

DEFAULT_OPTIONS = (
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    # Fail fast on a dead address (then fail over) instead of backing off for up to 2 minutes.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.keepalive_time_ms", 30_000),
)


class ClientBase:
    """Endpoints, credentials and retry planning; `make_channel(address)` -> (channel, stub)."""

    def __init__(
        self,
        address: str | Sequence[str],
        api_key: str | None,
        timeout: float | None,
        *,
        auth: Auth | None,
        retry: RetryPolicy | None,
        balancing: Balancing | None,
        weights: Sequence[float] | None,
        eject_cooldown_s: float,
        make_channel: Callable[[str], tuple[Any, Any]],
    ):
        parsed = parse_addresses(address, weights)
        weighted = weights is not None or any(w != 1.0 for _, w in parsed)
        self.balancer = Balancer(
            parsed, make_channel, balancing or ("weighted" if weighted else "round_robin"), eject_cooldown_s
        )
        self.auth = resolve_auth(api_key, auth)
        self.retry = retry or RetryPolicy()
        self.timeout = timeout

    def _plan(self, request_id: str, timeout: float | None) -> CallPlan:
        """The attempts of one call; `timeout` None: the client's."""
        return CallPlan(self.retry, self.balancer, request_id, timeout if timeout is not None else self.timeout)

    def _generation(
        self, model: str, prompt: str | None, messages: list[dict] | None, timeout: float | None, params: dict
    ) -> tuple[pb.GenerateRequest, CallPlan]:
        request = build_request(model, prompt, messages, **params)
        return request, self._plan(request.request_id, timeout)

    def _attempt(self, plan: CallPlan, request: Any) -> tuple[Endpoint, dict[str, Any]]:
        """The next attempt's endpoint and call arguments (metadata, timeout).

        A GenerateRequest carries the plan's request id: every attempt the same one, unless the
        plan chose a new one (on_accepted="new_id").
        """
        endpoint, remaining = plan.next_attempt()
        if isinstance(request, pb.GenerateRequest):
            request.request_id = plan.request_id
        return endpoint, {"metadata": self.auth.metadata(), "timeout": remaining}
