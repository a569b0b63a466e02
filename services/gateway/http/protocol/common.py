"""What every OpenAI body model shares: strict parsing, the 400 for a body that does not fit, usage.

Models are strict (a JSON `true` is not an integer, `"9"` is not a number, as the old hand
parser had it) and forbid unknown fields, as OpenAI itself refuses them. `parse` turns
pydantic's first validation error into the OpenAI-shaped InvalidArgument with `param` the
offending field's path (`messages[0].content`), never pydantic's own message dump.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, ValidatorFunctionWrapHandler, WrapValidator
from pydantic_core import PydanticCustomError

from llmserve.common.errors import InvalidArgument

M = TypeVar("M", bound=BaseModel)
_MAX_PARAM = 100  # a hostile body's field names come back in the error: bounded

#: pydantic error types -> what the value must be.
_EXPECTED = {
    "int_type": "an integer", "int_from_float": "an integer", "float_type": "a number",
    "string_type": "a string", "bool_type": "a boolean", "list_type": "a list",
    "dict_type": "an object", "model_type": "an object", "model_attributes_type": "an object",
}


class RequestModel(BaseModel):
    """A request body (or part of one): strict types, unknown fields refused."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)


class ResponseModel(BaseModel):
    """A response body (or part of one). Unknown fields are refused here too, so a test that
    validates what the server sent against the model catches a stray key; -inf stays -Infinity
    (a masked token's logprob), as json.dumps writes it."""

    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")

    def dump(self) -> bytes:
        """The JSON body: the fields given when it was built (an unset optional field stays absent)."""
        return self.model_dump_json(exclude_unset=True).encode()


def refuse(why: str) -> PydanticCustomError:
    """The error a validator raises: `why` says what the value must be ("must be ...");
    the path of the field is put in front of it."""
    return PydanticCustomError("llmserve", "{why}", {"why": why})


def neutral_only(*allowed: Any, falsy: bool = False) -> Callable[[Any], Any]:
    """A validator for a field OpenAI defines and this server does not implement: only the
    values that ask for nothing (None, the `allowed` ones, any falsy one if `falsy`) pass."""

    def check(value: Any) -> Any:
        if value is None or (falsy and value in (False, 0, "", [], {})) or any(value == a for a in allowed):
            return value
        raise refuse("is not supported by this server (only its default is accepted)")

    return check


def parse(model: type[M], body: Any, endpoint: str) -> M:
    """`body` as `model`, or InvalidArgument naming the first field that does not fit."""
    try:
        return model.model_validate(body)
    except ValidationError as e:
        raise invalid_argument(e.errors(include_url=False, include_input=False), endpoint) from None


def invalid_argument(errors: list[Any], endpoint: str) -> InvalidArgument:
    error = errors[0]
    path = field_path(error["loc"])[:_MAX_PARAM]
    kind = error["type"]
    if kind == "extra_forbidden":
        if len(error["loc"]) == 1:
            message = f"unrecognized request argument {path!r} for {endpoint}"
        else:
            message = f"unrecognized field {path!r}"
    elif kind == "llmserve":
        message = f"{path} {error['ctx']['why']}"
    elif kind == "missing":
        message = f"{path} is required"
    elif kind == "literal_error":
        message = f"{path} must be one of {error['ctx']['expected']}"
    elif kind in _EXPECTED:
        message = f"{path} must be {_EXPECTED[kind]}"
    else:
        message = f"{path} is not valid ({kind})"
    return InvalidArgument(message[:300], param=path or None)


def field_path(loc: tuple[int | str, ...]) -> str:
    """pydantic's location as OpenAI writes a param: `messages[0].content`."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class Usage(ResponseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


def one_of(why: str) -> WrapValidator:
    """For a union field: one error naming the field and its accepted shapes, instead of one
    error per union member (whose locations name pydantic's member types)."""

    def check(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            return handler(value)
        except ValidationError:
            raise refuse(why) from None

    return WrapValidator(check)


Stop = Annotated[str | list[str] | None, one_of("must be a string or a list of strings")]
