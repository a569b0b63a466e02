"""Runs the engine's step loop on its own thread so the asyncio side never waits on torch."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

from llmserve.common.logging import get_logger

from .engine.interface import Engine
from .engine.types import TokenOutput

log = get_logger(__name__)


class EngineThread:
    """Steps the engine while it has work; hands each step's outputs to the event loop."""

    def __init__(self, engine: Engine, loop: asyncio.AbstractEventLoop,
                 on_outputs: Callable[[list[TokenOutput]], None],
                 on_step: Callable[[float, list[TokenOutput]], None] = lambda _s, _o: None,
                 name: str = "engine"):
        self.engine = engine
        self._on_step = on_step
        self._loop = loop
        self._on_outputs = on_outputs
        self._wake = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.steps = 0

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
                outputs = self.engine.step()
            except Exception:  # a bug in the engine must not kill the worker silently
                log.exception("engine step failed")
                raise
            self.steps += 1
            self._on_step(time.perf_counter() - started, outputs)  # metrics; runs on this thread
            if outputs:
                self._loop.call_soon_threadsafe(self._on_outputs, outputs)
