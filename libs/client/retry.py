"""Retries with backoff, shared by the sync and async clients.

What is retried, and why it is safe:

* Only UNAVAILABLE and RESOURCE_EXHAUSTED (by default), and for streams only before the
  first message arrived. Once a token reached the caller, a plain retry would replay text the
  caller already consumed. Instead, a stream that breaks with UNAVAILABLE (its gateway died)
  *re-attaches*: the next attempt, on another gateway, carries `resume_from_index` (the
  tokens the caller has), and that gateway takes the running generation over and streams it
  from there on, exactly once, so the caller's iterator sees no gap (`reattach=False`, or any
  other status: `StreamInterrupted` is raised).
* Every attempt of one call carries the same `request_id` (the client makes one when the
  caller leaves it empty). The gateway records the id atomically with the enqueue and
  answers ALREADY_EXISTS for an id it has seen, so a retry can never start a second
  generation.
* RESOURCE_EXHAUSTED (rate limit) is raised before anything is enqueued. UNAVAILABLE is
  ambiguous: "queue full" and "draining" happen before the enqueue, but a gateway that dies
  or loses Redis mid-call may have enqueued the request already. So when a retry answers
  ALREADY_EXISTS, it was our own earlier attempt that got through, and its tokens went to
  a connection that is gone. A stream (with `reattach`) then re-attaches to it from index 0.
  Otherwise `on_accepted` decides what happens:
  - "raise" (default, at-most-once): raise `RequestAlreadyAccepted`; the caller decides.
  - "new_id" (at-least-once): retry with a fresh request_id. The abandoned generation
    may still run to completion somewhere (costing compute, never seen by the caller).
    Right for idempotent work such as batch jobs and benchmarks.
  ALREADY_EXISTS on the first attempt means the caller reused an id: it is raised as is.
* The delay honours the server's `retry-after-ms` trailing metadata: RESOURCE_EXHAUSTED
  (a tenant-wide limit, the same on every gateway) waits at least that long; UNAVAILABLE
  ejects that endpoint for that long and fails over at once to another one if any is left.
* `timeout` is the deadline of the whole call, retries and waits included: each attempt
  gets what is left of it, and no retry is made that could not start before it.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Literal

import grpc

from .balancer import Balancer, Endpoint
from .types import new_request_id

RETRY_AFTER_KEY = "retry-after-ms"
_DEFAULT_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry. `RetryPolicy(max_attempts=1)` disables retries."""

    max_attempts: int = 5
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.2  # +-20%: clients that failed together do not retry together
    retryable: frozenset[grpc.StatusCode] = field(default=_DEFAULT_CODES)
    on_accepted: Literal["raise", "new_id"] = "raise"
    reattach: bool = True  # a stream broken by UNAVAILABLE continues through another gateway

    def backoff(self, retry_number: int) -> float:
        base = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (retry_number - 1))
        return base * random.uniform(1 - self.jitter, 1 + self.jitter)


class ClientRpcError(grpc.RpcError):
    """An RpcError the client raises itself, wrapping the status it got from the gateway."""

    def __init__(
        self,
        message: str,
        cause: grpc.RpcError | None = None,
        code: grpc.StatusCode = grpc.StatusCode.UNKNOWN,
    ):
        super().__init__(message)
        self.cause = cause
        self._code = cause.code() if cause is not None else code
        self._details = message

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self):
        return self.cause.trailing_metadata() if self.cause is not None else ()


class RequestAlreadyAccepted(ClientRpcError):
    """An earlier attempt of this call was enqueued, but its answer was lost with its connection."""


class StreamInterrupted(ClientRpcError):
    """A stream broke after tokens were delivered; it is not retried (the text would repeat)."""


def retry_after_s(error: grpc.RpcError) -> float | None:
    """The server's `retry-after-ms` trailing metadata, in seconds."""
    try:
        metadata = error.trailing_metadata() or ()
    except Exception:  # some RpcErrors (e.g. local cancellation) carry none
        return None
    for key, value in metadata:
        if key == RETRY_AFTER_KEY:
            try:
                return max(0.0, int(value) / 1000)
            except ValueError:
                return None
    return None


class CallPlan:
    """The attempts of one call: which endpoint next, with what timeout, after what delay."""

    def __init__(self, policy: RetryPolicy, balancer: Balancer, request_id: str, timeout: float | None):
        self.policy = policy
        self.balancer = balancer
        self.request_id = request_id or new_request_id()
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.attempt = 0
        self.maybe_accepted = False  # an earlier attempt may have been enqueued
        self.resume_from: int | None = None  # set: the next attempt re-attaches from this index
        self.streaming = False  # a GenerateStream call (it can re-attach), set by the client

    def next_attempt(self) -> tuple[Endpoint, float | None]:
        self.attempt += 1
        remaining = None if self.deadline is None else max(0.001, self.deadline - time.monotonic())
        return self.balancer.pick(), remaining

    def succeeded(self, endpoint: Endpoint) -> None:
        self.balancer.restore(endpoint)

    def after_error(self, error: grpc.RpcError, endpoint: Endpoint, delivered: int = 0) -> float:
        """Seconds to wait before the next attempt; raises when there is none to make.
        `delivered`: for a stream, the completion tokens the caller has (its next index)."""
        if delivered or self.resume_from is not None:
            return self.after_stream_break(error, endpoint, delivered)
        return self._after_error(error, endpoint)

    def after_stream_break(self, error: grpc.RpcError, endpoint: Endpoint, next_index: int) -> float:
        """A stream broke after `next_index` tokens reached the caller: re-attach (see the
        module docstring) after the returned delay, or raise `StreamInterrupted`."""
        code = error.code()
        last_try = self.attempt >= self.policy.max_attempts
        if not self.policy.reattach or code != grpc.StatusCode.UNAVAILABLE or last_try:
            raise StreamInterrupted(
                f"stream {self.request_id} broke after {next_index} token(s): {code.name}: "
                f"{error.details()}",
                error,
            ) from error
        self.resume_from = next_index
        hint = retry_after_s(error)
        self.balancer.eject(endpoint, hint)
        delay = 0.0
        if self.balancer.seconds_until_healthy() > 0:
            delay = max(self.policy.backoff(self.attempt), hint or 0.0)
        if self.deadline is not None and time.monotonic() + delay >= self.deadline:
            raise StreamInterrupted(f"stream {self.request_id} broke and its deadline leaves no re-attach",
                                    error) from error
        return delay

    def _after_error(self, error: grpc.RpcError, endpoint: Endpoint) -> float:
        code = error.code()
        if code == grpc.StatusCode.ALREADY_EXISTS and self.maybe_accepted:
            return self._already_accepted(error)
        if code not in self.policy.retryable or self.attempt >= self.policy.max_attempts:
            raise error
        hint = retry_after_s(error)
        if code == grpc.StatusCode.UNAVAILABLE:
            self.maybe_accepted = True
            self.balancer.eject(endpoint, hint)
            # Another endpoint is usable: fail over at once. Otherwise back off (at least the
            # server's hint), then try the endpoint that comes back first.
            delay = 0.0
            if self.balancer.seconds_until_healthy() > 0:
                delay = max(self.policy.backoff(self.attempt), hint or 0.0)
        else:
            delay = max(self.policy.backoff(self.attempt), hint or 0.0)
        if self.deadline is not None and time.monotonic() + delay >= self.deadline:
            raise error
        return delay

    def _already_accepted(self, error: grpc.RpcError) -> float:
        if self.streaming and self.policy.reattach and self.attempt < self.policy.max_attempts:
            self.resume_from = 0  # our own earlier attempt got through: take it over from the start
            return 0.0
        if self.policy.on_accepted == "new_id" and self.attempt < self.policy.max_attempts:
            self.request_id = new_request_id()
            self.maybe_accepted = False
            return 0.0
        raise RequestAlreadyAccepted(
            f"request {self.request_id} was accepted by an earlier attempt whose connection "
            "failed; its result cannot be recovered here (use on_accepted='new_id' to run it again)",
            error,
        ) from error
