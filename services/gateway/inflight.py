"""Requests this gateway is streaming to clients, and the in-order delivery of their tokens.

Workers push chunks through the token sink. Each request keeps the next index it expects
and the newest dispatch attempt it has seen: chunks from an older attempt (a worker that
was declared dead and woke up) are discarded, and tokens already delivered are skipped,
so the client sees every completion index exactly once.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from llmserve.common.errors import Cancelled, DeadlineExceeded, GenerationFailed, LLMServeError
from llmserve.common.logging import get_logger

log = get_logger(__name__)


@dataclass
class TokenEvent:
    index: int
    token_ids: list[int]
    text: str


@dataclass
class FinishEvent:
    reason: str  # "stop" | "length"
    prompt_tokens: int
    completion_tokens: int


Event = TokenEvent | FinishEvent | LLMServeError


@dataclass
class Chunk:
    """A worker's chunk, protobuf-free."""

    request_id: str
    attempt: int
    index: int
    token_ids: list[int]
    text: str
    outcome: str = ""  # "" (not final) | stop | length | cancelled | error | deadline
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str = ""
    worker_id: str = ""


@dataclass
class RequestStream:
    request_id: str
    attempt: int = 1
    next_index: int = 0
    worker_id: str = ""
    finished: bool = False
    events: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)

    def offer(self, chunk: Chunk) -> None:
        if self.finished or chunk.attempt < self.attempt:
            return  # fenced: a stale attempt, or after the end
        self.attempt = chunk.attempt
        self.worker_id = chunk.worker_id or self.worker_id
        end = chunk.index + len(chunk.token_ids)
        if chunk.token_ids and end <= self.next_index:
            pass  # already delivered by an earlier attempt
        elif chunk.index > self.next_index:
            log.warning("token gap; chunk dropped", request_id=self.request_id,
                        expected=self.next_index, got=chunk.index)
            return
        elif chunk.token_ids:
            skip = self.next_index - chunk.index
            self.events.put_nowait(TokenEvent(self.next_index, chunk.token_ids[skip:], chunk.text))
            self.next_index = end
        if chunk.outcome:
            self.finished = True
            self.events.put_nowait(_final_event(chunk))


def _final_event(chunk: Chunk) -> Event:
    if chunk.outcome in ("stop", "length"):
        return FinishEvent(chunk.outcome, chunk.prompt_tokens, chunk.completion_tokens)
    if chunk.outcome == "cancelled":
        return Cancelled("the request was cancelled")
    if chunk.outcome == "deadline":
        return DeadlineExceeded("the request's deadline passed before it completed")
    return GenerationFailed(chunk.error or "generation failed")


class InflightRegistry:
    """request_id -> RequestStream for requests whose client is connected here."""

    def __init__(self) -> None:
        self._streams: dict[str, RequestStream] = {}
        self._cancel_listeners: dict[str, asyncio.Queue[str]] = {}

    def open(self, request_id: str) -> RequestStream | None:
        """A new stream, or None if the id is already streaming here."""
        if request_id in self._streams:
            return None
        stream = self._streams[request_id] = RequestStream(request_id)
        return stream

    def close(self, request_id: str) -> None:
        self._streams.pop(request_id, None)

    def deliver(self, chunk: Chunk) -> bool:
        """Route a chunk; False when nobody here waits for it (the worker should stop)."""
        stream = self._streams.get(chunk.request_id)
        if stream is None:
            return False
        stream.offer(chunk)
        return True

    def __len__(self) -> int:
        return len(self._streams)

    # Cancellation feedback to the sink connection of the worker that runs the request.
    def listen_cancellations(self, worker_id: str) -> asyncio.Queue[str]:
        queue = self._cancel_listeners[worker_id] = asyncio.Queue()
        return queue

    def stop_listening(self, worker_id: str, queue: asyncio.Queue[str]) -> None:
        if self._cancel_listeners.get(worker_id) is queue:
            del self._cancel_listeners[worker_id]

    def notify_worker_cancel(self, request_id: str, worker_id: str) -> None:
        queue = self._cancel_listeners.get(worker_id)
        if queue is not None:
            queue.put_nowait(request_id)
