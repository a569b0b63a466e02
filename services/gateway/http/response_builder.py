"""Events of one OpenAI request (one or more choices) as OpenAI response objects, whole or as chunks.

A whole response is built from the protocol models. Stream chunks, one per token, stay plain
dicts serialised by pydantic's JSON encoder: building the chunk models per token cost about
twice what the chunk cost before (the measurement is in docs/backend.md); the tests validate
every chunk they read against `ChatCompletionChunk` / `CompletionResponse` instead.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from llmserve.common.logprobs import TokenLogprob

from ..streams.inflight import FinishEvent, TokenEvent
from .logprobs_format import LogprobsFormatter
from .openai_format import OpenAIRequest, usage
from .protocol import ChatCompletionResponse, CompletionResponse, Usage
from .protocol.chat import ChatChoice, ChatMessageOut
from .protocol.completions import CompletionChoice
from .tool_calls import CallBuffer, parse_calls


@dataclass
class ChoiceResult:
    """A whole choice as collected: its text, logprobs and finish."""

    text: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob] | None = None
    finish: FinishEvent | None = None


class ResponseBuilder:
    """Shapes the events of a request's choices (`index` as in `choices.expand`)."""

    def __init__(self, request: OpenAIRequest, request_id: str, model: str, tokenizer: Any = None,
                 echo: list[tuple[str, int]] | None = None):
        """`echo`: per choice, the prompt text to echo and its first token id (completions `echo`)."""
        self.chat = request.chat
        self.include_usage = request.include_usage
        self.n = request.n
        self.per_prompt = request.best_of  # choices generated per prompt: n, or best_of candidates
        self.id = ("chatcmpl-" if self.chat else "cmpl-") + request_id
        self.model = model
        self.created = int(time.time())
        self.tokenizer = tokenizer
        self.want_logprobs = request.params.logprobs and not request.ranking_logprobs
        self._formatters: dict[int, LogprobsFormatter] = {}
        self._finished: dict[int, FinishEvent] = {}
        self.echo = echo
        self.tools = request.tools
        self._calls: dict[int, CallBuffer] = {}  # per choice, while a tool call may be coming

    def _buffer(self, index: int) -> CallBuffer | None:
        if self.tools is None:
            return None
        return self._calls.setdefault(index, CallBuffer(self.tools))

    def _formatter(self, index: int) -> LogprobsFormatter:
        return self._formatters.setdefault(index, LogprobsFormatter(self.tokenizer, self.chat))

    def _prompt_logprobs(self, index: int, logprobs: list[TokenLogprob]) -> dict:
        assert self.echo is not None
        return self._formatter(index).prompt(self.echo[index][1], logprobs)

    def _logprobs(self, index: int, logprobs: list[TokenLogprob] | None) -> dict | None:
        if not self.want_logprobs:
            return None
        return self._formatter(index).format(logprobs or [])

    def _base(self, chunk: bool) -> dict:
        kind = ("chat.completion" if self.chat else "text_completion") + (".chunk" if chunk and self.chat else "")
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def whole(self, results: dict[int, ChoiceResult]) -> ChatCompletionResponse | CompletionResponse:
        """The whole response, built from the protocol models (once per request: validated as built)."""
        order = self._best(results) if self.per_prompt > self.n else sorted(results)
        choices = [self._whole_choice(index, results[source], source) for index, source in enumerate(order)]
        finishes = {i: r.finish for i, r in results.items() if r.finish is not None}
        if self.chat:
            return ChatCompletionResponse(id=self.id, object="chat.completion", created=self.created, model=self.model,
                                          choices=choices, usage=self.total_usage(finishes))
        return CompletionResponse(id=self.id, object="text_completion", created=self.created, model=self.model,
                                  choices=choices, usage=self.total_usage(finishes))

    def _best(self, results: dict[int, ChoiceResult]) -> list[int]:
        """best_of: per prompt, the n candidates with the highest log probability per token, best first."""
        order: list[int] = []
        for start in range(0, len(results), self.per_prompt):
            group = range(start, start + self.per_prompt)
            order += sorted(group, key=lambda i: -_mean_logprob(results[i]))[: self.n]
        return order

    def _whole_choice(self, index: int, r: ChoiceResult, source: int) -> Any:
        """Choice `index` of the response, from the events of choice `source` (the same unless best_of)."""
        reason = r.finish.reason if r.finish else None
        if self.echo is not None:
            lp = None
            if self.want_logprobs:
                head = self._prompt_logprobs(source, r.prompt_logprobs or [])
                tail = self._logprobs(source, r.logprobs) or {}
                lp = {k: head[k] + tail[k] for k in head}
        else:
            lp = self._logprobs(source, r.logprobs)
        text = (self.echo[source][0] if self.echo is not None else "") + "".join(r.text)
        calls = parse_calls(text, self.tools) if self.tools is not None and reason == "stop" else None
        if calls:
            message = ChatMessageOut(role="assistant", content=None, tool_calls=calls)
            return ChatChoice(index=index, message=message, finish_reason="tool_calls", logprobs=lp)
        if self.chat:
            message = ChatMessageOut(role="assistant", content=text)
            return ChatChoice(index=index, message=message, finish_reason=reason, logprobs=lp)
        return CompletionChoice(index=index, text=text, finish_reason=reason, logprobs=lp)

    def total_usage(self, finishes: dict[int, FinishEvent]) -> Usage:
        """Every choice's completion tokens (every best_of candidate's too); each prompt's tokens once
        (as OpenAI counts n > 1)."""
        prompt = sum(f.prompt_tokens for i, f in finishes.items() if i % self.per_prompt == 0)
        completion = sum(f.completion_tokens for f in finishes.values())
        return usage(FinishEvent(next(iter(finishes.values())).reason, prompt, completion))

    def chunk(self, index: int, event: TokenEvent | None, *, first: bool = False) -> dict | None:
        """A token chunk of choice `index` (or, with event None and first, the chat role announcement);
        None while a possible tool call holds the text back."""
        text = event.text if event is not None else ""
        buffer = self._buffer(index) if event is not None else None
        if buffer is not None:
            text = buffer.feed(text)
            if not text and not event.logprobs:
                return None
        lp = self._logprobs(index, event.logprobs) if event is not None else None
        if event is not None and event.prompt_logprobs is not None and self.echo is not None:
            text, lp = self.echo[index][0], self._prompt_logprobs(index, event.prompt_logprobs)
        if self.chat:
            delta = {"role": "assistant", "content": text} if first else {"content": text}
            choice: dict[str, Any] = {"index": index, "delta": delta, "finish_reason": None, "logprobs": lp}
        else:
            choice = {"index": index, "text": text, "finish_reason": None, "logprobs": lp}
        return {**self._base(True), "choices": [choice]}

    def echo_chunks(self) -> list[dict]:
        """Streamed echo without logprobs: each choice's prompt, before anything else."""
        if self.echo is None or self.want_logprobs:
            return []  # with logprobs the prompt comes with its logprobs (see `chunk`)
        return [self._echo_chunk(i, text) for i, (text, _) in enumerate(self.echo)]

    def _echo_chunk(self, index: int, text: str) -> dict:
        chunk = self._empty(index)
        chunk["choices"][0]["text"] = text  # echo is completions only: never a tool call
        return chunk

    def final_chunks(self, index: int, finish: FinishEvent, *, last: bool) -> list[dict]:
        """Choice `index`'s finish chunk; after the `last` choice's, usage: in its own chunk when
        asked (as OpenAI does), else in that finish chunk."""
        self._finished[index] = finish
        held = self._held_chunks(index, finish)
        done = self._empty(index)
        called = bool(held) and "tool_calls" in held[-1]["choices"][0].get("delta", {})
        done["choices"][0]["finish_reason"] = "tool_calls" if called else finish.reason
        if self.chat:
            done["choices"][0]["delta"] = {}
        if not last:
            return [*held, done]
        total = self.total_usage(self._finished).model_dump()
        if not self.include_usage:
            return [*held, {**done, "usage": total}]
        return [*held, {**done, "usage": None}, {**self._base(True), "choices": [], "usage": total}]

    def _empty(self, index: int) -> dict:
        chunk = self.chunk(index, None)
        assert chunk is not None  # no event: never held back
        return chunk

    def _held_chunks(self, index: int, finish: FinishEvent) -> list[dict]:
        """What a tool-call buffer still holds at the end: content, or the calls as one delta."""
        buffer = self._calls.get(index)
        if buffer is None:
            return []
        text, calls = buffer.finish()
        if calls and finish.reason == "stop":
            chunk = self._empty(index)
            chunk["choices"][0]["delta"] = {"tool_calls": [{"index": i, **c} for i, c in enumerate(calls)]}
            return [chunk]
        if calls:  # ended by length: what was made is content after all
            text = buffer.held
        if not text:
            return []
        chunk = self._empty(index)
        chunk["choices"][0]["delta" if self.chat else "text"] = {"content": text} if self.chat else text
        return [chunk]


def _mean_logprob(result: ChoiceResult) -> float:
    if not result.logprobs:
        return 0.0  # nothing generated (max_tokens 0 with echo): every candidate is the same
    return sum(lp.logprob for lp in result.logprobs) / len(result.logprobs)
