"""Waiting in async tests for something another task or process does."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def wait_for(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.01) -> None:
    """Poll `predicate()` every `interval` seconds until it is true; fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(interval)
