"""`response_format` and the `structured_outputs` extension -> a structured-output Constraint.

OpenAI's `response_format` (chat): `{"type": "text"}`, `{"type": "json_object"}`, or
`{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}, "strict": true}}`.
llmserve's extension (both endpoints, the shape vLLM uses): `"structured_outputs": {"json": <schema>}`,
`{"regex": "..."}`, `{"choice": ["a", "b"]}`, `{"grammar": "<EBNF>"}` or `{"json_object": true}`,
exactly one key. Shapes are checked here; whether xgrammar can enforce the schema, regex or
grammar is checked at admission (validation.validate), still before anything is queued.
"""

from __future__ import annotations

import json
from typing import Any

from llmserve.common.errors import InvalidArgument
from llmserve.common.structured import Constraint, choice, json_schema

_EXTENSION_KEYS = ("json", "regex", "choice", "grammar", "json_object")


def constraint_of(body: dict, *, chat: bool) -> tuple[Constraint | None, str]:
    """(the body's constraint or None, the field it came from)."""
    fmt = _response_format(body.get("response_format")) if chat else None
    ext = _extension(body.get("structured_outputs"))
    if fmt is not None and ext is not None:
        raise InvalidArgument("response_format and structured_outputs cannot both constrain the output",
                              param="structured_outputs")
    return fmt or ext or (None, "")


def _response_format(value: Any) -> tuple[Constraint, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        raise InvalidArgument("response_format must be an object with a type", param="response_format")
    kind = value["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        return Constraint("json_object"), "response_format"
    if kind != "json_schema":
        raise InvalidArgument("response_format.type must be text, json_object or json_schema",
                              param="response_format.type")
    spec = value.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise InvalidArgument("response_format.json_schema must be an object with a name",
                              param="response_format.json_schema")
    param = "response_format.json_schema.schema"
    if "schema" not in spec:
        raise InvalidArgument(f"{param} is required", param=param)
    return json_schema(spec["schema"], param), param


def _extension(value: Any) -> tuple[Constraint, str] | None:
    if value is None:
        return None
    keys = [k for k in _EXTENSION_KEYS if isinstance(value, dict) and value.get(k) not in (None, False)]
    if not isinstance(value, dict) or len(keys) != 1 or set(value) - set(_EXTENSION_KEYS):
        raise InvalidArgument(f"structured_outputs must be an object with exactly one of {', '.join(_EXTENSION_KEYS)}",
                              param="structured_outputs")
    key = keys[0]
    param = f"structured_outputs.{key}"
    item = value[key]
    if key == "json":
        if isinstance(item, str):
            try:
                item = json.loads(item)
            except ValueError:
                raise InvalidArgument(f"{param} must be a JSON schema", param=param) from None
        return json_schema(item, param), param
    if key == "choice":
        return choice(item, param), param
    if key == "json_object":
        if item is not True:
            raise InvalidArgument(f"{param} must be true", param=param)
        return Constraint("json_object"), param
    if not isinstance(item, str) or not item:
        raise InvalidArgument(f"{param} must be a non-empty string", param=param)
    return Constraint(key, item), param
