"""Runs the engine's step loop on its own thread so the asyncio side never waits on torch.

An exception from a step ends the thread and is reported to `on_failure` (the worker's
supervisor, which takes the worker out of service): a dead engine never hides behind a
SERVING health check.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

from llmserve.common.logging import get_logger

from .engine.interface import Engine
from .engine.types import TokenOutput

log = get_logger(__name__)


class InjectedStepFailure(RuntimeError):
    """Raised by the `fail_step_after` test hook in place of a real engine bug."""


class EngineThread:
    """Steps the engine while it has work; hands each step's outputs to the event loop."""

    def __init__(self, engine: Engine, loop: asyncio.AbstractEventLoop,
                 on_outputs: Callable[[list[TokenOutput]], None],
                 on_step: Callable[[float, list[TokenOutput]], None] = lambda _s, _o: None,
                 name: str = "engine", on_failure: Callable[[BaseException], None] = lambda _e: None,
                 fail_step_after: int | None = None):
        self.engine = engine
        self.name = name
        self._on_failure = on_failure
        self._fail_step_after = fail_step_after  # a test hook: None in production
        self._on_step = on_step
        self._loop = loop
        self._on_outputs = on_outputs
        self._wake = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.steps = 0
        self.failed: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop:
            if not self.engine.has_unfinished():
                self._wake.wait(timeout=0.1)
                self._wake.clear()
                continue
            started = time.perf_counter()
            try:
                if self._fail_step_after is not None and self.steps >= self._fail_step_after:
                    raise InjectedStepFailure(f"injected failure after {self.steps} steps")
                outputs = self.engine.step()
            except Exception as e:  # a bug in the engine must not kill the worker silently
                log.exception("engine step failed", thread=self.name)
                self.failed = e
                self._on_failure(e)
                return
            self.steps += 1
            self._on_step(time.perf_counter() - started, outputs)  # metrics; runs on this thread
            if outputs:
                self._loop.call_soon_threadsafe(self._on_outputs, outputs)
