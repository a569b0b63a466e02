"""Supervised background tasks: nothing dies quietly.

Every service runs its loops (intake, heartbeat, dispatch, recovery, alert evaluation, ...)
through a `Supervisor`. The loops themselves retry outages (a RedisError, a gateway that is
away); what reaches the supervisor is a bug or a broken dependency. It is logged with its
traceback and counted in `llmserve.background_task.failures{service,task}` (Prometheus:
`llmserve_background_task_failures_total`), then handled by the task's policy:

- `restart`: run the loop again after a backoff that doubles up to `max_backoff_s`, for a
  loop whose state lives in Redis or is rebuilt on entry (a scheduler's dispatch loop);
- `fatal`: escalate to the server (`on_fatal`, installed by `GrpcApp`), which turns health
  NOT_SERVING, lets the service give its work to peers and exits non-zero, so the
  orchestrator restarts it. For a loop whose death leaves the service unable to do its job
  while still looking alive (a worker's intake or engine).

Threads (a worker's engine thread) report through `fail_threadsafe`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Literal

from opentelemetry import metrics
from opentelemetry.metrics import Meter

from .logging import get_logger
from .metrics import METER_NAME

log = get_logger(__name__)

Policy = Literal["restart", "fatal"]


class Supervisor:
    """Runs a service's background loops and acts on their unexpected exceptions."""

    def __init__(self, service: str, *, initial_backoff_s: float = 0.1, max_backoff_s: float = 5.0,
                 meter: Meter | None = None):
        self.service = service
        self.initial_backoff_s = initial_backoff_s
        self.max_backoff_s = max_backoff_s
        self.failures = (meter or metrics.get_meter(METER_NAME)).create_counter(
            "llmserve.background_task.failures", "{failure}",
            "Unexpected exceptions that ended a background task (restarted or fatal).")
        #: Called once with (task, error) on the first fatal failure; GrpcApp installs it.
        self.on_fatal: Callable[[str, BaseException], None] | None = None
        self.fatal: tuple[str, BaseException] | None = None
        self.failure_counts: dict[str, int] = {}
        self._tasks: dict[str, asyncio.Task] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def spawn(self, name: str, loop: Callable[[], Awaitable[None]], policy: Policy = "restart") -> asyncio.Task:
        """Run `loop()` as task `name` under `policy`; a normal return ends it for good."""
        self._loop = asyncio.get_running_loop()
        task = asyncio.create_task(self._run(name, loop, policy), name=f"{self.service}:{name}")
        self._tasks[name] = task
        return task

    async def _run(self, name: str, loop: Callable[[], Awaitable[None]], policy: Policy) -> None:
        backoff = self.initial_backoff_s
        while True:
            try:
                await loop()
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the point of supervision: anything a loop did not expect
                self.count(name, e, policy)
                if policy == "fatal":
                    self.fail(name, e)
                    return
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff_s)

    def count(self, name: str, error: BaseException, policy: str = "recovered") -> None:
        """Log and count a failure of `name`; alone, for a loop that recovers in place."""
        self.failure_counts[name] = self.failure_counts.get(name, 0) + 1
        self.failures.add(1, {"service": self.service, "task": name})
        log.error("background task failed", task=name, policy=policy, error=f"{type(error).__name__}: {error}",
                  exc_info=error)

    def fail(self, name: str, error: BaseException) -> None:
        """A fatal failure of `name` (on the event loop): escalate once to `on_fatal`."""
        if self.fatal is not None:
            return
        self.fatal = (name, error)
        if self.on_fatal is not None:
            self.on_fatal(name, error)

    def fail_threadsafe(self, name: str, error: BaseException) -> None:
        """From a thread the supervisor does not run (an engine thread): count, then escalate."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return

        def report() -> None:
            self.count(name, error, "fatal")
            self.fail(name, error)

        loop.call_soon_threadsafe(report)

    def watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind to `loop` for thread reports before any task is spawned."""
        self._loop = loop

    def running(self, name: str) -> bool:
        task = self._tasks.get(name)
        return task is not None and not task.done()

    async def stop(self, timeout: float = 5.0) -> None:
        """Cancel every task and wait (bounded: a shutdown must not hang on one) for them to end."""
        current = asyncio.current_task()
        tasks = [t for t in self._tasks.values() if t is not current]
        self._tasks = {}
        for task in tasks:
            task.cancel()
        if not tasks:
            return
        _done, stuck = await asyncio.wait(tasks, timeout=timeout)
        for task in stuck:
            log.warning("background task did not stop", task=task.get_name(),
                        at=[f"{f.f_code.co_filename}:{f.f_lineno}" for f in task.get_stack()])
