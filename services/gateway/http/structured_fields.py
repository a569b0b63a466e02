"""`response_format` and the `structured_outputs` extension -> a structured-output Constraint.

OpenAI's `response_format` (chat): `{"type": "text"}`, `{"type": "json_object"}`, or
`{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}, "strict": true}}`.
llmserve's extension (both endpoints, the shape vLLM uses): `"structured_outputs": {"json": <schema>}`,
`{"regex": "..."}`, `{"choice": ["a", "b"]}`, `{"grammar": "<EBNF>"}` or `{"json_object": true}`,
exactly one key. The protocol models check the shapes; here they become a Constraint, and
whether xgrammar can enforce the schema, regex or grammar is checked at admission
(validation.validate), still before anything is queued.
"""

from __future__ import annotations

import json

from llmserve.common.errors import InvalidArgument
from llmserve.common.structured import Constraint, choice, json_schema

from .protocol.chat import ResponseFormat
from .protocol.sampling import StructuredOutputs


def constraint_of(fmt: ResponseFormat | None, ext: StructuredOutputs | None) -> tuple[Constraint | None, str]:
    """(the request's constraint or None, the field it came from)."""
    from_format = _response_format(fmt) if fmt is not None else None
    from_ext = _extension(ext) if ext is not None else None
    if from_format is not None and from_ext is not None:
        raise InvalidArgument("response_format and structured_outputs cannot both constrain the output",
                              param="structured_outputs")
    return from_format or from_ext or (None, "")


def _response_format(fmt: ResponseFormat) -> tuple[Constraint, str] | None:
    if fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return Constraint("json_object"), "response_format"
    if fmt.json_schema is None:
        raise InvalidArgument("response_format.json_schema is required with type json_schema",
                              param="response_format.json_schema")
    param = "response_format.json_schema.schema"
    return json_schema(fmt.json_schema.schema_, param), param


def _extension(ext: StructuredOutputs) -> tuple[Constraint, str]:
    # The model lets exactly one key through set (json_object only as true).
    if ext.json_ is not None:
        param, item = "structured_outputs.json", ext.json_
        if isinstance(item, str):
            try:
                item = json.loads(item)
            except ValueError:
                raise InvalidArgument(f"{param} must be a JSON schema", param=param) from None
        return json_schema(item, param), param
    if ext.choice is not None:
        return choice(ext.choice, "structured_outputs.choice"), "structured_outputs.choice"
    if ext.json_object:
        return Constraint("json_object"), "structured_outputs.json_object"
    kind, item = ("regex", ext.regex) if ext.regex is not None else ("grammar", ext.grammar)
    param = f"structured_outputs.{kind}"
    if not item:
        raise InvalidArgument(f"{param} must be a non-empty string", param=param)
    return Constraint(kind, item), param
