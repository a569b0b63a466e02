"""`/v1/completions` bodies: the request, the whole response and the streamed chunks."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator

from .common import ResponseModel, Usage, neutral_only, one_of, refuse
from .logprobs import CompletionLogprobs
from .sampling import SamplingRequest

_PROMPT_SHAPES = ("must be a string, a list of strings, a list of token ids or a list of lists of token ids "
                  "(none empty)")


def _not_empty(value: Any) -> Any:
    if isinstance(value, list) and (not value or any(isinstance(v, list) and not v for v in value)):
        raise refuse(_PROMPT_SHAPES)
    return value


Prompt = Annotated[str | list[str] | list[int] | list[list[int]], one_of(_PROMPT_SHAPES), AfterValidator(_not_empty)]


class CompletionRequest(SamplingRequest):
    """The text completion body."""

    prompt: Prompt
    echo: bool | None = None
    logprobs: int | None = None  # how many top alternatives per token, 0..5; null: none
    best_of: int | None = None  # candidates per prompt, the n most likely returned (not with stream)
    # vLLM refuses it too: the served models have no fill-in-the-middle format
    suffix: Annotated[Any, AfterValidator(neutral_only(""))] = None

    def prompt_list(self) -> list[str | list[int]]:
        """One entry per prompt: a string, or a list of token ids."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        ids = [v for v in prompt if isinstance(v, int)]
        if len(ids) == len(prompt):
            return [ids]
        return [v if isinstance(v, str) else list(v) for v in prompt if not isinstance(v, int)]


class CompletionChoice(ResponseModel):
    index: int
    text: str
    finish_reason: str | None = None
    logprobs: CompletionLogprobs | None = None


class CompletionResponse(ResponseModel):
    """Whole and streamed alike (OpenAI's chunks are `text_completion` objects too)."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
