"""Structured-output constraints: what a request may ask for, checked before it is queued.

A `Constraint` is one of a JSON schema, any JSON object, a regex or an EBNF grammar (a list
of choices becomes a grammar). The gateway checks it with xgrammar's own converters, the
ones the worker compiles with, so whatever is admitted compiles; the worker compiles it
against its tokenizer (`llmserve.worker.engine.grammar`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from llmserve.common.errors import InvalidArgument
from llmserve.common.v1 import work_pb2

KINDS = ("json_schema", "json_object", "regex", "grammar")
MAX_CONSTRAINT_BYTES = 64 * 1024  # a schema or grammar bigger than this is a 400, not a slow compile
_CPP_PREFIX = re.compile(r"^\[[0-9:]+\] \S+:\d+: ")  # xgrammar's "[time] file.cc:line: " prefix


@dataclass(frozen=True)
class Constraint:
    """`kind` is one of KINDS; `value` the schema (JSON text), regex or grammar ("" for json_object)."""

    kind: str
    value: str = ""

    def to_pb(self) -> work_pb2.Constraint:
        if self.kind == "json_object":
            return work_pb2.Constraint(json_object=True)
        return work_pb2.Constraint(**{self.kind: self.value})

    @classmethod
    def from_pb(cls, pb: work_pb2.Constraint) -> Constraint | None:
        kind = pb.WhichOneof("kind")
        if kind is None or (kind == "json_object" and not pb.json_object):
            return None
        return cls(kind, "" if kind == "json_object" else getattr(pb, kind))


def from_public_pb(pb) -> Constraint | None:
    """The constraint of a public `llmserve.gateway.v1.StructuredOutput` (None when unset)."""
    kind = pb.WhichOneof("kind")
    if kind is None or (kind == "json_object" and not pb.json_object):
        return None
    if kind == "choice":
        return choice(list(pb.choice.choices), "structured_output.choice")
    if kind == "json_schema":
        try:
            schema = json.loads(pb.json_schema)
        except ValueError:
            raise InvalidArgument("structured_output.json_schema must be JSON text",
                                  param="structured_output.json_schema") from None
        return json_schema(schema, "structured_output.json_schema")
    return Constraint(kind, "" if kind == "json_object" else getattr(pb, kind))


def json_schema(schema: object, param: str) -> Constraint:
    """A JSON-schema constraint from a decoded schema (an object or a boolean); `checked` tells
    whether xgrammar can enforce it."""
    if not isinstance(schema, dict | bool):
        raise InvalidArgument(f"{param} must be a JSON schema (an object)", param=param)
    return Constraint("json_schema", json.dumps(schema, separators=(",", ":")))


def choice(choices: object, param: str) -> Constraint:
    """The completion is exactly one of `choices` (an EBNF alternation of string literals)."""
    if not isinstance(choices, list) or not choices or not all(isinstance(c, str) and c for c in choices):
        raise InvalidArgument(f"{param} must be a non-empty list of non-empty strings", param=param)
    grammar = "root ::= " + " | ".join(_ebnf_literal(c) for c in choices)
    return Constraint("grammar", grammar)


def _ebnf_literal(text: str) -> str:
    # JSON string escapes (\" \\ \n \t \uXXXX) are exactly the ones GBNF literals accept.
    return json.dumps(text, ensure_ascii=False)


def checked(constraint: Constraint, param: str) -> Constraint:
    """`constraint` if xgrammar can build its grammar; else InvalidArgument naming `param`."""
    if constraint.kind not in KINDS:
        raise InvalidArgument(f"unknown constraint kind {constraint.kind!r}", param=param)
    if len(constraint.value.encode()) > MAX_CONSTRAINT_BYTES:
        raise InvalidArgument(f"{param} is over {MAX_CONSTRAINT_BYTES} bytes", param=param)
    try:
        grammar_of(constraint)
    except (RuntimeError, ValueError, TypeError) as e:
        raise InvalidArgument(f"{param} is invalid: {_reason(e)}", param=param) from None
    return constraint


def grammar_of(constraint: Constraint):
    """The xgrammar Grammar of a constraint (tokenizer-independent; raises on an invalid one)."""
    import xgrammar as xgr  # imported on first use: services without constraints never load it

    if constraint.kind == "json_schema":
        return xgr.Grammar.from_json_schema(constraint.value, any_whitespace=False, strict_mode=True)
    if constraint.kind == "json_object":
        return xgr.Grammar.from_json_schema('{"type":"object"}', any_whitespace=False, strict_mode=False)
    if constraint.kind == "regex":
        return xgr.Grammar.from_regex(constraint.value)
    return xgr.Grammar.from_ebnf(constraint.value)


def _reason(error: Exception) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return _CPP_PREFIX.sub("", text)[:300]
