"""`/v1/chat/completions` bodies: the request, the whole response and the streamed chunks."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, model_validator

from .common import RequestModel, ResponseModel, Usage, neutral_only, one_of, refuse
from .logprobs import ChatLogprobs
from .sampling import SamplingRequest

# ---- request


class TextPart(RequestModel):
    type: Literal["text"]
    text: str
    prompt_cache_breakpoint: dict[str, Any] | None = None  # no effect: a cache hint (prefix caching is automatic)


Content = Annotated[str | list[TextPart] | None, one_of("must be a string or a list of text parts")]


class FunctionCallIn(RequestModel):
    name: str
    arguments: str | dict[str, Any] = "{}"  # OpenAI sends a JSON string; an object is read as well


class ToolCallIn(RequestModel):
    """An earlier assistant turn's call, in the history."""

    id: str = ""
    type: Literal["function"] = "function"
    function: FunctionCallIn


class ChatMessage(RequestModel):
    """One message of the history; every role's fields in one model (as vLLM reads them)."""

    role: Literal["system", "developer", "user", "assistant", "tool"]  # developer: OpenAI's newer system
    content: Content = None
    name: str | None = None  # no effect: the chat templates served do not show participant names
    tool_calls: list[ToolCallIn] | None = None  # assistant
    tool_call_id: str | None = None  # tool
    refusal: str | None = None  # assistant; no effect (a refusal is not shown to the model again)

    def text(self) -> str:
        """The content as text (the parts form joined: a text model is served only text)."""
        if self.content is None:
            return ""
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class FunctionDefinition(RequestModel):
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema; none: no arguments
    strict: bool | None = None  # the arguments always follow the schema when a call is forced


class Tool(RequestModel):
    type: Literal["function"]
    function: FunctionDefinition

    @model_validator(mode="before")
    @classmethod
    def _function_tool(cls, value: Any) -> Any:
        fn = value.get("function") if isinstance(value, dict) else None
        if not isinstance(value, dict) or value.get("type") != "function" or not isinstance(fn, dict) \
                or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise refuse("must be {type: function, function: {name, parameters}}")
        return value


class NamedFunction(RequestModel):
    name: str


class NamedToolChoice(RequestModel):
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Annotated[
    Literal["none", "auto", "required"] | NamedToolChoice | None,
    one_of('must be none, auto, required or {"type": "function", "function": {"name": ...}}'),
]


class JsonSchemaFormat(RequestModel):
    name: str
    description: str | None = None
    schema_: Any = Field(alias="schema")  # required here: a json_schema format without one asks for nothing
    strict: bool | None = None  # the output always follows the schema


class ResponseFormat(RequestModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class ChatCompletionRequest(SamplingRequest):
    """The chat body. Fields that cannot change the output are typed and ignored; fields OpenAI
    defines and this server does not implement pass only at their neutral values."""

    messages: list[ChatMessage]
    max_completion_tokens: int | None = None  # OpenAI's newer name for max_tokens; wins when both
    logprobs: bool | None = None
    top_logprobs: int | None = None
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice = None
    # no effect on the output: they label, bill, route or cache
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    prompt_cache_options: dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None  # one call per completion either way
    # not implemented: only the value that asks for nothing
    functions: Annotated[Any, AfterValidator(neutral_only(falsy=True))] = None
    function_call: Annotated[Any, AfterValidator(neutral_only("none"))] = None
    modalities: Annotated[Any, AfterValidator(neutral_only(["text"]))] = None
    audio: Annotated[Any, AfterValidator(neutral_only())] = None
    prediction: Annotated[Any, AfterValidator(neutral_only())] = None
    reasoning_effort: Annotated[Any, AfterValidator(neutral_only())] = None
    verbosity: Annotated[Any, AfterValidator(neutral_only())] = None
    web_search_options: Annotated[Any, AfterValidator(neutral_only())] = None
    moderation: Annotated[Any, AfterValidator(neutral_only())] = None


# ---- response


class FunctionCall(ResponseModel):
    name: str
    arguments: str  # JSON text


class ToolCall(ResponseModel):
    id: str
    type: Literal["function"]
    function: FunctionCall


class ToolCallDelta(ToolCall):
    index: int  # which call of the choice


class ChatMessageOut(ResponseModel):
    role: Literal["assistant"]
    content: str | None
    tool_calls: list[ToolCall] | None = None


class ChatChoice(ResponseModel):
    index: int
    message: ChatMessageOut
    finish_reason: str | None
    logprobs: ChatLogprobs | None


class ChatCompletionResponse(ResponseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class Delta(ResponseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChatChunkChoice(ResponseModel):
    index: int
    delta: Delta
    finish_reason: str | None = None
    logprobs: ChatLogprobs | None = None


class ChatCompletionChunk(ResponseModel):
    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
