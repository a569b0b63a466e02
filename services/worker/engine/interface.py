"""The interface the worker service drives. One engine serves one model."""

from __future__ import annotations

from typing import Protocol

from .types import EngineRequest, EngineStats, TokenOutput


class Engine(Protocol):
    """A continuous-batching generation engine.

    Threading contract: `add_request`, `abort_request` and `stats` may be called from any
    thread; `step` is called from one engine thread only. Each `step` runs one iteration of
    the batch (prefill chunks and decodes together) and returns the new output of every
    request that made progress or finished in it. A request finishes exactly once: its last
    TokenOutput has finished=True. After `abort_request`, the request finishes with
    CANCELLED at the next step and its KV blocks are free by then.
    """

    def add_request(self, request: EngineRequest) -> None:
        """Queue a request; it joins the running batch at the next step boundary."""

    def abort_request(self, request_id: str) -> None:
        """Cancel a request wherever it is (waiting or running). Unknown ids are ignored."""

    def step(self) -> list[TokenOutput]:
        """Run one iteration; an empty list when there is nothing to do."""

    def has_unfinished(self) -> bool:
        """True while any request is waiting or running."""

    def stats(self) -> EngineStats:
        """KV and queue accounting for heartbeats."""
