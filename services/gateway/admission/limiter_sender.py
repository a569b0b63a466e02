"""The rate limiter's Redis calls: queued, sent in pipelined batches, each answered by its deadline.

Why it is built this way (issue 21). The sender it replaces enforced the Redis deadline by
cancelling the task that was sending. Python 3.11's `asyncio.wait_for`, which redis-py wraps
around every socket write, returns a result that is ready when a cancel lands: the cancel is
swallowed but the task's cancel count stays raised, so the next real timeout could no longer
be told from an outside cancel and escaped as CancelledError. The one long-lived batch task
died, and every later call, queued behind it, waited for ever. Cancelling mid-read also threw
away answers Redis had already acted on (issue 22: phantom leases and window entries).

So nothing here is cancelled to enforce a deadline:
- each batch on the wire has a timer (one per batch, not per call: timers cost a burst more
  than Redis does); when it fires, the batch's open calls get `RedisDown` (the limiter's
  policy decides then), whatever the sending task does, or whether it still lives. A timer
  that fires late, or a loop turn longer than STALL_S, means this process is the slow one,
  not Redis: the batch gets another deadline, up to `max_wait` (the socket timeout), so our
  own CPU saturation does not turn into 503s while Redis is up. Likewise while Redis has
  answered some call within `slow_wait` (issue 18: slow is not down): a busy script or a fork
  stalls it for hundreds of ms, and such a batch waits for its answer up to `slow_wait` in all;
  only a Redis that has answered nothing that recently is taken for down at the deadline;
- a batch past its deadline gives up its slot (its task still reads the late answer), and a
  call still queued after `max_wait` fails then;
- each batch is sent by a short task of its own (at most `max_in_flight` at once: Redis runs
  them one after another anyway); a batch task that raises or is cancelled is counted and
  logged, its open calls fail at once, and the next batch is dispatched as usual: there is no
  long-lived task that can wedge the queue;
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
    batch: list[Call] | None = None  # the batch it went out in, once sent

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
                 on_late: Callable[[list[Call]], None] | None = None, max_in_flight: int = 2,
                 max_wait: float = 1.0, slow_wait: float = 0.0):
        self._send = send
        self._on_lost = on_lost
        self._on_late = on_late
        self.timeout = timeout
        self.max_wait = max(max_wait, timeout)  # no call waits longer, however busy we are
        self.slow_wait = min(slow_wait, self.max_wait)
        self._last_answer = float("-inf")  # loop time Redis last answered a batch
        self.max_in_flight = max_in_flight
        self.deaths = 0
        self._queue: collections.deque[Call] = collections.deque()
        self._in_flight: dict[asyncio.Task, list[Call]] = {}
        self._late: set[int] = set()  # batches past their deadline: still read, no longer a slot
        self._sweeper: asyncio.TimerHandle | None = None  # the queue's max_wait bound
        self._dispatch_soon = False
        self._closed = False

    def submit(self, script: str, tenant: str, args: list, *, detached: bool = False) -> Call:
        """Queue one call; its future resolves by its batch's deadline (see the module docstring).

        `detached`: nobody awaits it (a revoke); its outcome is read here so none goes unheard.
        """
        if self._closed:
            raise RedisDown("the rate limiter is closed")
        loop = asyncio.get_running_loop()
        call = Call(script, tenant, args, loop.time())
        if detached:
            call.future.add_done_callback(_consume)
        self._queue.append(call)
        if self._sweeper is None:
            self._sweeper = loop.call_at(call.enqueued + self.max_wait, self._sweep)
        if not self._in_flight:
            self._dispatch()  # idle: send at once, no extra loop turn for a lone call
        elif not self._dispatch_soon:
            # Calls made in this loop turn go out together, in one batch.
            self._dispatch_soon = True
            loop.call_soon(self._dispatch)
        return call

    def answered(self) -> None:
        """`send` got an answer from Redis: it is alive, however slow."""
        self._last_answer = asyncio.get_running_loop().time()

    def since_answer(self) -> float:
        """Seconds since Redis last answered (inf: never)."""
        return asyncio.get_running_loop().time() - self._last_answer

    @staticmethod
    def age(batch: list[Call]) -> float:
        """Seconds since the batch's oldest call was made."""
        return asyncio.get_running_loop().time() - min(call.enqueued for call in batch)

    @property
    def oldest_open_s(self) -> float:
        """How long the oldest unanswered call has waited (0 when none): the admission pulse."""
        oldest = [c.enqueued for c in self._queue if not c.future.done()][:1]
        for batch in self._in_flight.values():
            oldest += [c.enqueued for c in batch if not c.future.done()][:1]
        return asyncio.get_running_loop().time() - min(oldest) if oldest else 0.0

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
        if self._sweeper is not None:
            self._sweeper.cancel()
        self.fail_queued(RedisDown("the rate limiter is closing"))
        batches = list(self._in_flight.values())
        for task in list(self._in_flight):
            task.cancel()
        await asyncio.gather(*self._in_flight, return_exceptions=True)
        for batch in batches:
            _fail(batch, RedisDown("the rate limiter is closing"))

    def _sweep(self) -> None:
        """Fail the calls queued longer than max_wait; re-arm for the next oldest."""
        self._sweeper = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self._queue and (self._queue[0].future.done() or now - self._queue[0].enqueued >= self.max_wait):
            call = self._queue.popleft()
            if not call.future.done():
                call.expired = True
                call.future.set_exception(RedisDown(f"not sent to Redis within {self.max_wait:.1f} s"))
        if self._queue and not self._closed:
            self._sweeper = loop.call_at(self._queue[0].enqueued + self.max_wait, self._sweep)

    def _dispatch(self) -> None:
        self._dispatch_soon = False
        loop = asyncio.get_running_loop()
        while self._queue and len(self._in_flight) - len(self._late) < self.max_in_flight and not self._closed:
            batch: list[Call] = []
            while self._queue and len(batch) < BATCH:
                call = self._queue.popleft()
                # An admission whose caller gave up is not sent at all: nothing to undo later.
                if not (call.script == "acquire" and call.abandoned):
                    batch.append(call)
            if batch:
                self._launch(batch, loop)

    def _launch(self, batch: list[Call], loop: asyncio.AbstractEventLoop) -> None:
        sent = loop.time()
        # Redis runs one batch at a time: one already on the wire is ahead of this one.
        ahead = sum(len(b) for b in self._in_flight.values())
        due = sent + self.timeout + (ahead + len(batch)) * PER_CALL_S
        for call in batch:
            call.batch = batch
        loop.call_at(due, self._expire, batch, sent, due)
        task = loop.create_task(self._send(batch))
        self._in_flight[task] = batch
        task.add_done_callback(self._batch_done)

    def _expire(self, batch: list[Call], sent: float, due: float) -> None:
        if all(call.future.done() for call in batch):
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        if now - due > STALL_S:
            self._extend(batch, sent)  # the timer itself fired late: this process was busy
            return
        # One loop turn before the verdict: an answer read off the socket in this very turn
        # is parsed first, and a turn longer than STALL_S means this process (a busy loop,
        # not Redis) is what is slow.
        loop.call_soon(self._confirm, batch, sent, now)

    def _confirm(self, batch: list[Call], sent: float, fired: float) -> None:
        now = asyncio.get_running_loop().time()
        if now - fired > STALL_S:
            self._extend(batch, sent)
        elif now - self._last_answer < self.slow_wait and now - sent < self.slow_wait:
            self._extend(batch, sent, limit=self.slow_wait)  # Redis is alive, only slow
        else:
            self._expired(batch)

    def _extend(self, batch: list[Call], sent: float, limit: float | None = None) -> None:
        """Redis may well have answered while we were busy: another deadline, up to `limit`
        (max_wait) after it was sent."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        limit = self.max_wait if limit is None else limit
        if now - sent >= limit:
            self._expired(batch)
            return
        due = min(now + self.timeout, sent + limit)
        loop.call_at(due, self._expire, batch, sent, due)

    def _expired(self, batch: list[Call]) -> None:
        open_calls = [call for call in batch if not call.future.done()]
        if not open_calls:
            return
        for call in open_calls:
            call.expired = True
        _fail(open_calls, RedisDown(f"no answer from Redis within {self.timeout * 1000:.0f} ms"))
        if self._closed:
            return
        # Its task goes on reading the late answer, but the batch no longer holds a slot: the
        # calls behind it are not made to wait for a Redis that may never answer.
        self._late.add(id(batch))
        if self._on_late is not None:
            self._on_late(batch)
        self._dispatch()

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


def _fail(calls: list[Call], error: Exception) -> None:
    for call in calls:
        if not call.future.done():
            call.future.set_exception(error)


def _consume(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()
