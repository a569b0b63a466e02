"""Gateway health follows the admission path: NOT_SERVING while admissions no longer complete.

Every request passes the rate limiter, so the age of the limiter's oldest unanswered call is
the admission path's pulse. Each call is answered by its own deadline (milliseconds), so an
age past `admission_stall_s` means something is wrong in this process (a wedged sender, an
event loop that cannot run timers): a load balancer should stop sending work here, which a
gateway that stays SERVING while admitting nobody (issue 21) prevented.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from llmserve.common.logging import get_logger

log = get_logger(__name__)


class AdmissionWatchdog:
    """Polls `oldest_waiting_s()` and calls `set_serving(False/True)` on each change."""

    def __init__(self, oldest_waiting_s: Callable[[], float], set_serving: Callable[[bool], Awaitable[None]],
                 stall_s: float, interval_s: float | None = None):
        self._oldest = oldest_waiting_s
        self._set_serving = set_serving
        self.stall_s = stall_s
        self.interval_s = interval_s if interval_s is not None else min(1.0, stall_s / 4)
        self.serving = True
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def check(self) -> None:
        """One look at the pulse; flips health when it changed."""
        age = self._oldest()
        serving = age <= self.stall_s
        if serving == self.serving:
            return
        self.serving = serving
        if serving:
            log.info("admission path completes again; health SERVING")
        else:
            log.error("admission path stalled; health NOT_SERVING", oldest_call_s=round(age, 3))
        await self._set_serving(serving)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.check()
            except Exception as e:  # a failed health update must not end the watch
                log.error("admission watchdog check failed", error=repr(e))
