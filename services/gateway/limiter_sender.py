"""The rate limiter's Redis calls: queued, sent in pipelined batches, each answered by its deadline.

Why it is built this way (issue 21). The sender it replaces enforced the Redis deadline by
cancelling the task that was sending. Python 3.11's `asyncio.wait_for`, which redis-py wraps
around every socket write, returns a result that is ready when a cancel lands: the cancel is
swallowed but the task's cancel count stays raised, so the next real timeout could no longer
be told from an outside cancel and escaped as CancelledError. The one long-lived batch task
died, and every later call, queued behind it, waited for ever. Cancelling mid-read also threw
away answers Redis had already acted on (issue 22: phantom leases and window entries).

So nothing here is cancelled to enforce a deadline:
- every call carries its own timer; when it fires, the call's future gets `RedisDown` (the
  limiter's policy decides then), whatever the sending task does, or whether it still lives.
  A timer that fires late, or a loop turn longer than STALL_S, means this process is the slow
  one, not Redis: the call gets another deadline, up to `max_wait` (the socket timeout), so
  our own CPU saturation does not turn into 503s while Redis is up;
- each batch is sent by a short task of its own (at most `max_in_flight` at once); a batch
  task that raises or is cancelled is counted and logged, its open calls fail at once, and the
  next batch is dispatched as usual: there is no long-lived task that can wedge the queue;
- a batch keeps waiting for its answer after the deadline (bounded by the socket timeout), so
  the limiter learns what Redis did for callers that had already given up, and undoes it.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field

from llmserve.common.logging import get_logger

log = get_logger(__name__)
BATCH = 256
STALL_S = 0.005  # a deadline timer this late means this process stalled, not Redis
PER_CALL_S = 40e-6  # writing and parsing a big batch takes this much longer per call


class RedisDown(Exception):
    """Redis did not answer in time (or the breaker is open)."""


@dataclass(eq=False)
class Call:
    """One script call of one tenant, and the future its caller waits on."""

    script: str  # acquire | release | renew | revoke
    tenant: str
    args: list  # this call's share of the script's per-request arguments
    enqueued: float  # loop time
    future: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    expired: bool = False  # its deadline passed before the answer came
    timer: asyncio.TimerHandle | None = None
    budget: float | None = None  # its deadline once sent; None: the sender's for its batch
    batch: list[Call] | None = None  # the batch it went out in, once sent
    sent: float = 0.0  # loop time its batch went out

    @property
    def abandoned(self) -> bool:
        """The caller no longer waits for this call's answer."""
        return self.future.done()


class BatchSender:
    """Queues calls and sends them in batches through `send`; see the module docstring.

    `send(batch)` must resolve the futures of the calls it answers; it is expected to handle
    Redis errors itself. Anything else it raises, or a cancel, counts as a sender death:
    `on_lost(batch, error)` is told (the limiter fails and reconciles those calls). `on_late(batch)`
    is told once when a batch on the wire passes its deadline (the circuit breaker counts it
    then, not when a hung Redis finally lets the socket time out).
    """

    def __init__(self, send: Callable[[list[Call]], Coroutine[None, None, None]], timeout: float, *,
                 on_lost: Callable[[list[Call], BaseException], None],
                 on_late: Callable[[list[Call]], None] | None = None, max_in_flight: int = 4,
                 max_wait: float = 1.0):
        self._send = send
        self.max_wait = max(max_wait, timeout)  # no call waits longer, however busy we are
        self._on_lost = on_lost
        self._on_late = on_late
        self.timeout = timeout
        self.max_in_flight = max_in_flight
        self.deaths = 0
        self._queue: collections.deque[Call] = collections.deque()
        self._in_flight: dict[asyncio.Task, list[Call]] = {}
        self._open: dict[Call, None] = {}  # unanswered calls, oldest first
        self._late: set[int] = set()  # ids of batches on the wire past their deadline
        self._dispatch_soon = False
        self._closed = False

    def submit(self, script: str, tenant: str, args: list, *, budget: float | None = None) -> Call:
        """Queue one call. Its future resolves by its deadline, which starts when its batch goes out
        (`budget`, default `timeout` plus the batch's size at PER_CALL_S); a call still queued
        after `max_wait` (every batch slot held by a Redis that does not answer) fails then."""
        if self._closed:
            raise RedisDown("the rate limiter is closed")
        loop = asyncio.get_running_loop()
        now = loop.time()
        call = Call(script, tenant, args, now, budget=budget)
        call.timer = loop.call_at(now + self.max_wait, self._expired, call)
        self._open[call] = None
        call.future.add_done_callback(lambda _: self._settled(call))
        self._queue.append(call)
        if not self._in_flight:
            self._dispatch()  # idle: send at once, no extra loop turn for a lone call
        elif not self._dispatch_soon:
            # Calls made in this loop turn go out together, in one batch.
            self._dispatch_soon = True
            loop.call_soon(self._dispatch)
        return call

    @property
    def oldest_open_s(self) -> float:
        """How long the oldest unanswered call has waited (0 when none)."""
        for call in self._open:
            return asyncio.get_running_loop().time() - call.enqueued
        return 0.0

    @property
    def queued(self) -> int:
        return len(self._queue)

    def fail_queued(self, error: Exception) -> None:
        """Decide every call not yet sent now (the breaker opened: they would only time out)."""
        while self._queue:
            call = self._queue.popleft()
            if not call.future.done():
                call.future.set_exception(error)

    async def close(self) -> None:
        self._closed = True
        self.fail_queued(RedisDown("the rate limiter is closing"))
        tasks = list(self._in_flight)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for call in list(self._open):
            if not call.future.done():
                call.future.set_exception(RedisDown("the rate limiter is closing"))

    def _expire(self, call: Call, due: float) -> None:
        if call.future.done():
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        if now - due > STALL_S:
            self._extend(call)  # the timer itself fired late: this process was busy
            return
        # One loop turn before the verdict: an answer read off the socket in this very turn
        # is parsed first, and a turn longer than STALL_S means this process (a busy loop,
        # not Redis) is what is slow.
        loop.call_soon(self._confirm, call, now)

    def _confirm(self, call: Call, fired: float) -> None:
        if call.future.done():
            return
        if asyncio.get_running_loop().time() - fired > STALL_S:
            self._extend(call)
            return
        self._expired(call)

    def _extend(self, call: Call) -> None:
        """Redis may well have answered while we were busy: another deadline, up to max_wait."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if now - call.sent >= self.max_wait:
            self._expired(call)
            return
        due = min(now + self.timeout, call.sent + self.max_wait)
        call.timer = loop.call_at(due, self._expire, call, due)

    def _expired(self, call: Call) -> None:
        call.expired = True
        call.future.set_exception(RedisDown(f"no answer from Redis within {self.timeout * 1000:.0f} ms"))
        batch = call.batch
        if batch is not None and id(batch) not in self._late and not self._closed:
            self._late.add(id(batch))
            if self._on_late is not None:
                self._on_late(batch)

    def _settled(self, call: Call) -> None:
        self._open.pop(call, None)
        if call.timer is not None:
            call.timer.cancel()
        # Nobody may be left to read it (an expired call's caller has moved on).
        if not call.future.cancelled():
            call.future.exception()

    def _dispatch(self) -> None:
        self._dispatch_soon = False
        loop = asyncio.get_running_loop()
        while self._queue and len(self._in_flight) < self.max_in_flight and not self._closed:
            batch: list[Call] = []
            while self._queue and len(batch) < BATCH:
                call = self._queue.popleft()
                # An admission whose caller gave up is not sent at all: nothing to undo later.
                if not (call.script == "acquire" and call.abandoned):
                    batch.append(call)
            if batch:
                now = loop.time()
                wire = self.timeout + len(batch) * PER_CALL_S
                for call in batch:
                    call.batch, call.sent = batch, now
                    due = now + (call.budget if call.budget is not None else wire)
                    if call.timer is not None:
                        call.timer.cancel()
                    call.timer = loop.call_at(due, self._expire, call, due)
                task = loop.create_task(self._send(batch))
                self._in_flight[task] = batch
                task.add_done_callback(self._batch_done)

    def _batch_done(self, task: asyncio.Task) -> None:
        batch = self._in_flight.pop(task)
        self._late.discard(id(batch))
        error: BaseException | None = asyncio.CancelledError() if task.cancelled() else task.exception()
        if error is not None and not self._closed:
            self.deaths += 1
            log.error("rate limiter: a batch sender died; its calls are failed and the sender goes on",
                      error=repr(error), calls=len(batch), deaths=self.deaths)
            self._on_lost(batch, error)
        self._dispatch()
