"""Per-tenant rate limits, exact across gateways: Redis is the single source of truth.

Each admission is one atomic Lua call (see ratelimit_scripts) that checks requests per
minute, tokens per minute (prompt + max_tokens reserved) and concurrent streams, and takes
a lease. The end of a request releases the lease and corrects the tokens to the real use.

Calls from many concurrent requests are sent in pipelined batches (limiter_sender): a burst
of a thousand admissions costs a few round trips. Every call is answered by its deadline
(`ratelimit_timeout_ms`) whatever happens to the task sending it; a late or failed batch counts
against the circuit breaker, and while Redis is out the configured policy decides: `closed`
answers UNAVAILABLE, `open` admits within a local in-process bound. An admission Redis granted
after its caller had given up (late answer, no answer, caller gone) is revoked at once, slot
and window entry, never left to expire (issue 22). Two refusals need no Redis at all
(admission_bounds): a tenant already at its concurrency limit on this gateway, and a tenant
with too many admissions waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError

from llmserve.common import redis_client
from llmserve.common.errors import RateLimited, Unavailable
from llmserve.common.logging import get_logger
from llmserve.common.metrics import GatewayMetrics
from llmserve.common.supervise import Supervisor

from ..settings import GatewaySettings
from . import ratelimit_scripts as scripts
from .admission_bounds import TenantAdmissions
from .auth import Limits
from .limiter_sender import BatchSender, Call, RedisDown
from .local_limits import CircuitBreaker, LocalLimiter

__all__ = ["Lease", "RateLimiter", "RedisDown"]
log = get_logger(__name__)
_RENEW_CHUNK = 500
_SCRIPTS = {"acquire": scripts.ACQUIRE, "release": scripts.RELEASE, "renew": scripts.RENEW,
            "revoke": scripts.REVOKE}


@dataclass
class Lease:
    """A request's hold on its tenant's limits, from admission to release."""

    tenant: str
    lease_id: str
    reserved_tokens: int
    local: bool = False  # granted by the fail-open local bound, not by Redis


class RateLimiter:
    """Admits requests against their tenant's limits; see the module docstring."""

    def __init__(self, settings: GatewaySettings, redis: aioredis.Redis | None = None):
        self.settings = settings
        self._timeout = settings.ratelimit_timeout_ms / 1000
        # The socket waits longer than the deadline: a late answer is still read, so what
        # Redis did for a caller that gave up can be undone (the deadline is the sender's).
        socket_timeout = max(self._timeout, settings.redis_timeout_s)
        self._redis = redis or redis_client.connect(settings.redis_url, socket_timeout=socket_timeout)
        self.defaults = Limits(
            settings.requests_per_minute, settings.tokens_per_minute, settings.max_concurrent_streams
        )
        self.breaker = CircuitBreaker(settings.breaker_failures, settings.breaker_reset_s)
        self.local = LocalLimiter(settings.ratelimit_local_share, settings.rate_window_s)
        self.tenants = TenantAdmissions(settings.admission_max_waiting_per_tenant)
        self.metrics: GatewayMetrics | None = None  # set by the service that owns the instruments
        self.sender = BatchSender(self._send_batch, self._timeout, on_lost=self._sender_died,
                                  on_late=self._late, max_wait=socket_timeout,
                                  slow_wait=min(settings.ratelimit_slow_wait_ms / 1000, socket_timeout))
        self._window_ms = int(settings.rate_window_s * 1000)
        self._lease_ms = int(settings.stream_lease_s * 1000)
        self._shas: dict[str, str] = {}
        self._live: dict[str, Lease] = {}
        self._tasks: list[asyncio.Task] = []

    def start(self, supervisor: Supervisor | None = None) -> None:
        """Start the lease renewal (restarted by `supervisor` after a bug). Batches need no
        long-lived sender: each goes out on its own task (see limiter_sender)."""
        loops = {"ratelimit-renew": self._renew_forever}
        if self.sender.slow_wait:
            loops["ratelimit-pulse"] = self._pulse_forever
        if supervisor is None:
            self._tasks = [asyncio.create_task(loop()) for loop in loops.values()]
            return
        self._tasks = [supervisor.spawn(name, loop) for name, loop in loops.items()]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        await self.sender.close()
        await self._redis.aclose()

    @property
    def live_leases(self) -> int:
        return len(self._live)

    @property
    def oldest_waiting_s(self) -> float:
        """Age of the oldest limiter call still unanswered: the admission path's pulse."""
        return self.sender.oldest_open_s

    async def acquire(self, tenant: str, limits: Limits, tokens: int) -> Lease:
        """Take a lease or raise RateLimited (with the retry delay) / Unavailable (closed policy)."""
        resolved = limits.over(self.defaults)
        self.tenants.check(tenant, resolved)
        lease = Lease(tenant, uuid.uuid4().hex, tokens)
        args = [
            resolved.requests_per_minute,
            resolved.tokens_per_minute,
            resolved.max_concurrent_streams,
            tokens,
            lease.lease_id,
        ]
        with self.tenants.admitting(tenant):
            try:
                code, value = await self._call("acquire", tenant, args)
            except RedisDown:
                return self._fallback(lease, resolved)
        if code != scripts.OK:
            raise _rejection(code, int(value), tenant, resolved, tokens)
        self._live[lease.lease_id] = lease
        self.tenants.took(tenant)
        return lease

    def adopt(self, tenant: str, lease_id: str) -> Lease:
        """Hold the lease another gateway took for a request re-attached here: renewed from now
        on, released when the stream here ends. A lease that already expired stays gone."""
        lease = Lease(tenant, lease_id, 0)
        self._live[lease_id] = lease
        self.tenants.took(tenant)
        return lease

    async def release(self, lease: Lease, used_tokens: int) -> None:
        """Free the concurrency slot and charge the real token use; best effort."""
        if lease.local:
            self.local.release(lease.tenant)
            return
        if self._live.pop(lease.lease_id, None) is not None:
            self.tenants.gave_back(lease.tenant)
        # An unreachable Redis loses only the correction: the slot expires with its lease.
        with contextlib.suppress(RedisDown, RedisError):
            await self._call("release", lease.tenant, [lease.lease_id, used_tokens])

    def _fallback(self, lease: Lease, limits: Limits) -> Lease:
        if self.settings.ratelimit_on_redis_down == "closed":
            raise Unavailable(
                "rate limiter unreachable (Redis down); failing closed",
                retry_after_s=self.settings.breaker_reset_s,
            )
        wait = self.local.try_acquire(lease.tenant, limits, lease.reserved_tokens)
        if wait is not None:
            raise RateLimited(
                f"tenant {lease.tenant!r} is over its local limit while Redis is unreachable",
                retry_after_s=wait,
            )
        lease.local = True
        return lease

    async def _call(self, script: str, tenant: str, args: list):
        if not self.breaker.allow():
            raise RedisDown("circuit breaker open")
        call = self.sender.submit(script, tenant, args)
        try:
            return await call.future
        except asyncio.CancelledError:
            # The caller went away; an admission it will never use is given back now.
            if script == "acquire":
                self._revoke_if_admitted(call)
            raise

    async def _send_batch(self, batch: list[Call]) -> None:
        groups: dict[tuple[str, str], list[Call]] = {}
        for call in batch:
            groups.setdefault((call.script, call.tenant), []).append(call)
        try:
            results = await self._execute(groups)
        except (RedisError, OSError, TimeoutError) as e:
            self._failed(batch, e)
            return
        self.sender.answered()
        if not any(call.expired for call in batch):  # a late one was counted at its deadline
            self.breaker.success()
        for calls, result in zip(groups.values(), results, strict=True):
            for i, call in enumerate(calls):
                self._answer(call, result, i)

    def _answer(self, call: Call, result, i: int) -> None:
        if isinstance(result, Exception):
            if not call.future.done():
                call.future.set_exception(result)
            return
        if call.script != "acquire":
            if not call.future.done():
                call.future.set_result(None)
            return
        answer = (int(result[2 * i]), int(result[2 * i + 1]))
        if not call.future.done():
            call.future.set_result(answer)
        elif answer[0] == scripts.OK:  # admitted after its caller had given up
            self._revoke([call])

    def _late(self, batch: list[Call]) -> None:
        self.breaker.failure()
        log.warning("rate limiter: no answer from Redis within the deadline", calls=len(batch),
                    breaker_open=self.breaker.is_open, waited_s=round(self.sender.age(batch), 3),
                    since_answer_s=round(self.sender.since_answer(), 3))
        if self.breaker.is_open:  # waiting calls would only time out as well: decide them now
            self.sender.fail_queued(RedisDown("circuit breaker open"))

    def _failed(self, batch: list[Call], error: Exception) -> None:
        log.warning("rate limiter: Redis call failed", error=type(error).__name__)
        # A refused or reset connection fails at once and costs an admission nothing: the breaker
        # is for calls that would wait. Not opening it for those, the first admission after Redis
        # is back goes straight to Redis instead of being refused for another `breaker_reset_s`.
        fast = isinstance(error, (RedisConnectionError, ConnectionError))
        if not fast and not any(call.expired for call in batch):  # a late one was counted at its deadline
            self.breaker.failure()
            if self.breaker.is_open:
                self.sender.fail_queued(RedisDown("circuit breaker open"))
        self._lost(batch, error)

    def _sender_died(self, batch: list[Call], error: BaseException) -> None:
        if self.metrics is not None:
            self.metrics.limiter_sender_died(type(error).__name__)
        self._lost(batch, error)

    def _lost(self, batch: list[Call], error: BaseException) -> None:
        """The batch's outcome is unknown: fail its open calls, undo any admission it made."""
        for call in batch:
            if not call.future.done():
                call.future.set_exception(RedisDown(type(error).__name__))
        self._revoke([call for call in batch if call.script == "acquire"])

    def _revoke_if_admitted(self, call: Call) -> None:
        future = call.future
        admitted = future.done() and not future.cancelled() and future.exception() is None
        if admitted and future.result()[0] == scripts.OK:
            self._revoke([call])

    def _revoke(self, calls: list[Call]) -> None:
        """Undo these admissions in Redis (slot and window entry); idempotent, best effort."""
        by_tenant: dict[str, list[str]] = {}
        for call in calls:
            by_tenant.setdefault(call.tenant, []).append(call.args[4])
        for tenant, ids in by_tenant.items():
            if self.metrics is not None:
                self.metrics.limiter_revoked(tenant, len(ids))
            with contextlib.suppress(RedisDown):  # closing: the leases expire on their own
                # Not behind the breaker: a revoke is how a flaky Redis is left with no debt.
                self.sender.submit("revoke", tenant, ids, detached=True)

    async def warm_up(self) -> None:
        """Connect and load the scripts before the first request (not on its deadline)."""
        try:
            await self._load_scripts()
            # One open connection per batch that may be on the wire: a burst's batches then
            # spend their deadline on Redis, not on TCP and HELLO handshakes.
            await asyncio.gather(*(self._redis.ping() for _ in range(self.sender.max_in_flight)))
            self.sender.answered()
        except RedisError as e:
            log.warning("rate limiter: Redis not reachable at start", error=type(e).__name__)

    async def _execute(self, groups: dict[tuple[str, str], list[Call]]) -> list:
        if not self._shas:
            await self._load_scripts()
        results = await self._pipeline(groups)
        if any(isinstance(r, NoScriptError) for r in results):  # Redis restarted: load and redo
            await self._load_scripts()
            results = await self._pipeline(groups)
        return results

    async def _pipeline(self, groups: dict[tuple[str, str], list[Call]]) -> list:
        async with self._redis.pipeline(transaction=False) as pipe:
            for (script, tenant), calls in groups.items():
                head = {"acquire": [self._window_ms, self._lease_ms], "renew": [self._lease_ms]}.get(
                    script, []
                )
                args = head + [a for call in calls for a in call.args]
                pipe.evalsha(self._shas[script], 3, *scripts.tenant_keys(tenant), *args)
            return await pipe.execute(raise_on_error=False)

    async def _load_scripts(self) -> None:
        for name, body in _SCRIPTS.items():
            self._shas[name] = await self._redis.script_load(body)

    async def _pulse_forever(self) -> None:
        """Keep `sender.answered()` fresh while Redis is alive, idle or busy: a PING every
        third of the slow wait, so that a Redis that stalls tells "slow" from "down" even on a
        gateway that made no limiter call lately. (A stalled Redis answers the PING late.)"""
        while True:
            await asyncio.sleep(self.sender.slow_wait / 3)
            try:
                await self._redis.ping()
            except (RedisError, OSError) as e:
                log.debug("rate limiter: Redis pulse failed", error=type(e).__name__)
                continue
            self.sender.answered()

    async def _renew_forever(self) -> None:
        """Extend this gateway's live leases well before they expire."""
        while True:
            await asyncio.sleep(self.settings.stream_lease_s / 3)
            by_tenant: dict[str, list[str]] = {}
            for lease in list(self._live.values()):
                by_tenant.setdefault(lease.tenant, []).append(lease.lease_id)
            for tenant, ids in by_tenant.items():
                for i in range(0, len(ids), _RENEW_CHUNK):
                    with contextlib.suppress(RedisDown, RedisError):
                        await self._call("renew", tenant, ids[i : i + _RENEW_CHUNK])


def _rejection(code: int, value_ms: int, tenant: str, limits: Limits, tokens: int) -> RateLimited:
    retry = max(value_ms, 1) / 1000
    if code == scripts.OVER_RPM:
        return RateLimited(
            f"tenant {tenant!r} reached requests_per_minute ({limits.requests_per_minute}); "
            f"retry in {retry:.2f}s",
            retry_after_s=retry,
        )
    if code == scripts.OVER_TPM:
        return RateLimited(
            f"tenant {tenant!r} reached tokens_per_minute ({limits.tokens_per_minute}); "
            f"retry in {retry:.2f}s",
            retry_after_s=retry,
        )
    if code == scripts.OVER_STREAMS:
        return RateLimited(
            f"tenant {tenant!r} reached max_concurrent_streams ({limits.max_concurrent_streams}); "
            f"retry in {retry:.2f}s",
            retry_after_s=retry,
        )
    # Waiting never helps a request bigger than the whole budget: no retry delay.
    return RateLimited(
        f"the request needs {tokens} tokens (prompt + max_tokens) but tokens_per_minute is "
        f"{limits.tokens_per_minute}; lower max_tokens"
    )
