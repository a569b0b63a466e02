"""How a request ended: the one outcome vocabulary of the engine, the worker, the scheduler and
the gateway.

`Outcome` mirrors `token_sink.proto`'s `Outcome` member for member (`OUTCOME_<NAME>`), so the
protobuf conversion is by name and there is no second table to keep in step. It is a string
enum: the empty UNSPECIFIED is falsy ("not final yet"), and the values are what logs, spans
and the OpenAI `finish_reason` show.
"""

from __future__ import annotations

import enum
import functools

from .errors import Cancelled, DeadlineExceeded, GenerationFailed, LLMServeError
from .tokensink.v1 import token_sink_pb2 as pb

_PB_PREFIX = "OUTCOME_"


class Outcome(enum.StrEnum):
    """The end of a request; UNSPECIFIED while it is still running."""

    UNSPECIFIED = ""
    STOP = "stop"  # EOS or a stop string
    LENGTH = "length"  # max_tokens or the context length
    CANCELLED = "cancelled"  # the client went away, or someone cancelled it
    ERROR = "error"  # the engine (or the suite) failed it; the detail travels beside it
    DEADLINE_EXCEEDED = "deadline"  # its deadline passed before or while it ran

    @classmethod
    def from_pb(cls, value: int) -> Outcome:
        return _from_pb(value)

    def to_pb(self) -> pb.Outcome:
        return _to_pb(self)

    @property
    def completed(self) -> bool:
        """True for the outcomes a client receives as a finish reason, not as an error."""
        return self in (Outcome.STOP, Outcome.LENGTH)

    def error(self, detail: str = "") -> LLMServeError:
        """The error a client receives for an outcome that is not a completion."""
        if self is Outcome.CANCELLED:
            return Cancelled("the request was cancelled")
        if self is Outcome.DEADLINE_EXCEEDED:
            return DeadlineExceeded("the request's deadline passed before it completed")
        if self.completed or self is Outcome.UNSPECIFIED:
            raise ValueError(f"{self.name} is not an error outcome")
        return GenerationFailed(detail or "generation failed")


# Every token chunk crosses both ways: look each name up once, not per chunk.
@functools.cache
def _from_pb(value: int) -> Outcome:
    return Outcome[pb.Outcome.Name(value).removeprefix(_PB_PREFIX)]


@functools.cache
def _to_pb(outcome: Outcome) -> pb.Outcome:
    return pb.Outcome.Value(_PB_PREFIX + outcome.name)
