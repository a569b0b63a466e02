"""Requests this gateway is streaming to clients, and the in-order delivery of their tokens.

Workers push chunks through the token sink. Each request keeps the next index it expects
and the newest dispatch attempt it has seen: chunks from an older attempt (a worker that
was declared dead and woke up) are discarded, and tokens already delivered are skipped,
so the client sees every completion index exactly once.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from llmserve.common.errors import Cancelled, LLMServeError
from llmserve.common.logging import get_logger
from llmserve.common.logprobs import TokenLogprob
from llmserve.common.outcome import Outcome

log = get_logger(__name__)


@dataclass
class TokenEvent:
    index: int
    token_ids: list[int]
    text: str
    logprobs: list[TokenLogprob] | None = None  # one per token_ids entry, when asked for
    prompt_logprobs: list[TokenLogprob] | None = None  # prompt tokens 1.., on one event only (echo)


@dataclass
class FinishEvent:
    reason: Outcome  # STOP or LENGTH (the other outcomes reach the client as errors)
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
    outcome: Outcome = Outcome.UNSPECIFIED  # UNSPECIFIED: not the final chunk
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str = ""
    worker_id: str = ""
    logprobs: list[TokenLogprob] | None = None
    prompt_logprobs: list[TokenLogprob] | None = None

    def __post_init__(self) -> None:
        self.outcome = Outcome(self.outcome)  # its value ("stop", ...) is accepted too


@dataclass
class RequestStream:
    request_id: str
    attempt: int = 1
    next_index: int = 0
    worker_id: str = ""
    finished: bool = False
    delivered_token_ids: list[int] = field(default_factory=list)
    delivered_text: list[str] = field(default_factory=list)
    prompt_logprobs_delivered: bool = False
    events: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)

    def fence(self, attempt: int) -> bool:
        """Start `attempt`: chunks of older attempts are discarded from now on."""
        if self.finished or attempt <= self.attempt:
            return False
        self.attempt = attempt
        return True

    def offer(self, chunk: Chunk) -> bool:
        """Take a chunk; False if it is stale (an older attempt, or after the end)."""
        if self.finished or chunk.attempt < self.attempt:
            return False
        self.attempt = chunk.attempt
        self.worker_id = chunk.worker_id or self.worker_id
        end = chunk.index + len(chunk.token_ids)
        self._learn_prefix(chunk, end)
        if chunk.prompt_logprobs is not None and not self.prompt_logprobs_delivered and chunk.index <= self.next_index:
            # Once (a resumed attempt sends them again): ahead of this chunk's tokens.
            self.prompt_logprobs_delivered = True
            self.events.put_nowait(TokenEvent(self.next_index, [], "", prompt_logprobs=chunk.prompt_logprobs))
        if chunk.index > self.next_index:
            log.warning("token gap; chunk dropped", request_id=self.request_id,
                        expected=self.next_index, got=chunk.index)
            return True
        if end > self.next_index:
            # Resumed workers start exactly at next_index; a partial overlap (only possible
            # for multi-token chunks) delivers the new tokens with the chunk's text.
            skip = self.next_index - chunk.index
            new_tokens = chunk.token_ids[skip:]
            logprobs = chunk.logprobs[skip:] if chunk.logprobs else None
            self.events.put_nowait(TokenEvent(self.next_index, new_tokens, chunk.text, logprobs))
            self.delivered_token_ids.extend(new_tokens)
            self.delivered_text.append(chunk.text)
            self.next_index = end
        elif not chunk.token_ids and chunk.text and chunk.index >= self.next_index:
            # (an older index: replayed to a re-attached client that has it already)
            self.events.put_nowait(TokenEvent(self.next_index, [], chunk.text))  # held-back text
            self.delivered_text.append(chunk.text)
        if chunk.outcome:
            self.finished = True
            final: Event = (FinishEvent(chunk.outcome, chunk.prompt_tokens, chunk.completion_tokens)
                            if chunk.outcome.completed else chunk.outcome.error(chunk.error))
            self.events.put_nowait(final)
        return True


    def _learn_prefix(self, chunk: Chunk, end: int) -> None:
        """A re-attached stream starts at the client's index, knowing none of the tokens before
        it; the worker resends them all: they are recorded (not delivered), so that a fence
        answers the whole progress and a later worker resumes exactly."""
        known = len(self.delivered_token_ids)
        if known >= self.next_index or not chunk.index <= known < end:
            return
        upto = min(end, self.next_index)
        self.delivered_token_ids.extend(chunk.token_ids[known - chunk.index:upto - chunk.index])
        if end <= self.next_index:
            self.delivered_text.append(chunk.text)


class InflightRegistry:
    """request_id -> RequestStream for requests whose client is connected here."""

    def __init__(self) -> None:
        self._streams: dict[str, RequestStream] = {}
        self._cancel_listeners: dict[str, asyncio.Queue[str]] = {}

    def open(self, request_id: str, replace: bool = False) -> RequestStream | None:
        """A new stream, or None if the id is already streaming here. With `replace` (a client
        re-attaching here), an older stream of the id is ended (CANCELLED) and replaced."""
        old = self._streams.get(request_id)
        if old is not None:
            if not replace:
                return None
            old.finished = True
            old.events.put_nowait(Cancelled("the client re-attached to this request on another call"))
        stream = self._streams[request_id] = RequestStream(request_id)
        return stream

    def close(self, request_id: str, stream: RequestStream | None = None) -> None:
        """Forget the id's stream (only `stream`, when given: a replaced one leaves its successor)."""
        if stream is None or self._streams.get(request_id) is stream:
            self._streams.pop(request_id, None)

    def deliver(self, chunk: Chunk) -> bool:
        """Route a chunk; False when nobody here waits for it from that worker (it should stop)."""
        stream = self._streams.get(chunk.request_id)
        return stream is not None and stream.offer(chunk)

    def get(self, request_id: str) -> RequestStream | None:
        return self._streams.get(request_id)

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
