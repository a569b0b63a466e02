"""Per-tenant rate limits, exact across gateways: Redis is the single source of truth.

Each admission is one atomic Lua call (see ratelimit_scripts) that checks requests per
minute, tokens per minute (prompt + max_tokens reserved) and concurrent streams, and takes
a lease. The end of a request releases the lease and corrects the tokens to the real use.

Calls from many concurrent requests are sent in pipelined batches over one connection:
a burst of a thousand admissions costs a few round trips, and the time limit on each
batch measures Redis, not a queue of connections. A batch that fails or takes longer than
`ratelimit_timeout_ms` counts against the circuit breaker; while Redis is out, the
configured policy decides: `closed` answers UNAVAILABLE, `open` admits within a local
in-process bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError

from llmserve.common.errors import RateLimited, Unavailable
from llmserve.common.logging import get_logger
from llmserve.common.supervise import Supervisor

from . import ratelimit_scripts as scripts
from .auth import Limits
from .local_limits import CircuitBreaker, LocalLimiter
from .settings import GatewaySettings

log = get_logger(__name__)
_BATCH = 256
_RENEW_CHUNK = 500
_STALL_S = 0.005
_PER_CALL_S = 40e-6  # writing and parsing a big batch takes this much longer per request
_SCRIPTS = {"acquire": scripts.ACQUIRE, "release": scripts.RELEASE, "renew": scripts.RENEW}


@dataclass
class Lease:
    """A request's hold on its tenant's limits, from admission to release."""

    tenant: str
    lease_id: str
    reserved_tokens: int
    local: bool = False  # granted by the fail-open local bound, not by Redis


class RedisDown(Exception):
    """Redis did not answer in time (or the breaker is open)."""


@dataclass
class _Call:
    script: str  # acquire | release | renew
    tenant: str
    args: list  # this call's share of the script's per-request arguments
    future: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class _Deadline:
    """Cancels the current task when `timeout` passes, unless the timer itself fires late.

    A late timer means this process was stalled, not Redis: the wait gets one more full
    deadline. `expired` tells the task's CancelledError apart from an outside cancel.
    """

    def __init__(self, timeout: float):
        self.task = asyncio.current_task()
        self.expired = False
        self._loop = asyncio.get_running_loop()
        self._timeout = timeout
        due = self._loop.time() + timeout
        self._handle = self._loop.call_at(due, self._fire, due, True)

    def _fire(self, due: float, may_extend: bool) -> None:
        now = self._loop.time()
        if may_extend and now - due > _STALL_S:
            self._handle = self._loop.call_at(now + self._timeout, self._fire, now + self._timeout, False)
            return
        self.expired = True
        self.task.cancel()

    def cancel(self) -> None:
        self._handle.cancel()


class RateLimiter:
    """Admits requests against their tenant's limits; see the module docstring."""

    def __init__(self, settings: GatewaySettings, redis: aioredis.Redis | None = None):
        self.settings = settings
        self._timeout = settings.ratelimit_timeout_ms / 1000
        self._redis = redis or aioredis.Redis.from_url(
            settings.redis_url,
            socket_timeout=self._timeout,
            socket_connect_timeout=self._timeout,
            retry=Retry(NoBackoff(), 0),
        )
        self.defaults = Limits(
            settings.requests_per_minute, settings.tokens_per_minute, settings.max_concurrent_streams
        )
        self.breaker = CircuitBreaker(settings.breaker_failures, settings.breaker_reset_s)
        self.local = LocalLimiter(settings.ratelimit_local_share, settings.rate_window_s)
        self._window_ms = int(settings.rate_window_s * 1000)
        self._lease_ms = int(settings.stream_lease_s * 1000)
        self._pending: list[_Call] = []
        self._wake = asyncio.Event()
        self._shas: dict[str, str] = {}
        self._live: dict[str, Lease] = {}
        self._sending = 0  # batches on the wire
        self._tasks: list[asyncio.Task] = []

    def start(self, supervisor: Supervisor | None = None) -> None:
        """Start the batch sender and the lease renewal (restarted by `supervisor` after a bug:
        without the sender no admission would ever get its verdict)."""
        if supervisor is None:
            self._tasks = [asyncio.create_task(self._run_batches()), asyncio.create_task(self._renew_forever())]
            return
        self._tasks = [supervisor.spawn("ratelimit-batches", self._run_batches),
                       supervisor.spawn("ratelimit-renew", self._renew_forever)]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        await self._redis.aclose()

    @property
    def live_leases(self) -> int:
        return len(self._live)

    async def acquire(self, tenant: str, limits: Limits, tokens: int) -> Lease:
        """Take a lease or raise RateLimited (with the retry delay) / Unavailable (closed policy)."""
        resolved = limits.over(self.defaults)
        lease = Lease(tenant, uuid.uuid4().hex, tokens)
        args = [
            resolved.requests_per_minute,
            resolved.tokens_per_minute,
            resolved.max_concurrent_streams,
            tokens,
            lease.lease_id,
        ]
        try:
            code, value = await self._call("acquire", tenant, args)
        except RedisDown:
            return self._fallback(lease, resolved)
        if code != scripts.OK:
            raise _rejection(code, int(value), tenant, resolved, tokens)
        self._live[lease.lease_id] = lease
        return lease

    async def release(self, lease: Lease, used_tokens: int) -> None:
        """Free the concurrency slot and charge the real token use; best effort."""
        if lease.local:
            self.local.release(lease.tenant)
            return
        self._live.pop(lease.lease_id, None)
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
        call = _Call(script, tenant, args)
        if self._pending or self._sending:
            self._pending.append(call)
            self._wake.set()
        else:
            # Nothing queued or on the wire (low load): send from the caller's own task rather
            # than waking the batcher, a task switch that costs a lone request more than Redis.
            await self._send([call])
        return await call.future

    async def _run_batches(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch, self._pending = self._pending[:_BATCH], self._pending[_BATCH:]
                await self._send(batch)

    async def _send(self, batch: list[_Call]) -> None:
        self._sending += 1
        try:
            await self._send_batch(batch)
        finally:
            self._sending -= 1

    async def _send_batch(self, batch: list[_Call]) -> None:
        groups: dict[tuple[str, str], list[_Call]] = {}
        for call in batch:
            groups.setdefault((call.script, call.tenant), []).append(call)
        try:
            results = await self._within_deadline(self._execute(groups), len(batch))
        except (RedisError, OSError, TimeoutError) as e:
            self._failed(batch, e)
            return
        self.breaker.success()
        for calls, result in zip(groups.values(), results, strict=True):
            for i, call in enumerate(calls):
                if call.future.done():
                    continue
                if isinstance(result, Exception):
                    call.future.set_exception(result)
                elif call.script == "acquire":
                    call.future.set_result((int(result[2 * i]), int(result[2 * i + 1])))
                else:
                    call.future.set_result(None)

    async def _within_deadline(self, work, size: int):
        """Run `work` with the Redis deadline, measured against Redis and not our own stalls.

        A deadline timer that fires late means this process was busy (GIL, a long callback)
        while Redis may well have answered; such a wait gets one more full deadline. The
        work runs in the calling task (no extra task: this is on every admission's path).
        """
        timeout = self._timeout + size * _PER_CALL_S
        deadline = _Deadline(timeout)
        try:
            return await work
        except asyncio.CancelledError:
            if deadline.expired and deadline.task.uncancel() == 0:
                raise TimeoutError(f"no answer from Redis within {timeout * 1000:.0f} ms") from None
            raise
        finally:
            deadline.cancel()

    def _failed(self, batch: list[_Call], error: Exception) -> None:
        self.breaker.failure()
        log.warning(
            "rate limiter: Redis call failed", error=type(error).__name__, breaker_open=self.breaker.is_open
        )
        failed = batch
        if self.breaker.is_open:  # waiting calls would only time out as well: decide them now
            failed, self._pending = batch + self._pending, []
        for call in failed:
            if not call.future.done():
                call.future.set_exception(RedisDown(type(error).__name__))

    async def warm_up(self) -> None:
        """Connect and load the scripts before the first request (not on its deadline)."""
        try:
            await self._load_scripts()
        except RedisError as e:
            log.warning("rate limiter: Redis not reachable at start", error=type(e).__name__)

    async def _execute(self, groups: dict[tuple[str, str], list[_Call]]) -> list:
        if not self._shas:
            await self._load_scripts()
        results = await self._pipeline(groups)
        if any(isinstance(r, NoScriptError) for r in results):  # Redis restarted: load and redo
            await self._load_scripts()
            results = await self._pipeline(groups)
        return results

    async def _pipeline(self, groups: dict[tuple[str, str], list[_Call]]) -> list:
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
