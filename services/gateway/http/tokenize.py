"""`/tokenize` and `/detokenize` (as vLLM serves them), for clients that count tokens.

Same credentials and model access as a completion; nothing is queued and no limit is charged.
`POST /tokenize {"model", "prompt" | "messages", "add_special_tokens"?}` answers
`{"tokens": [...], "count": n, "max_model_len": context length}` (messages get the chat
template and the generation prompt, as a chat completion would); `POST /detokenize
{"model", "tokens": [...]}` answers `{"prompt": text}`.
"""

from __future__ import annotations

import uuid

from starlette.requests import Request
from starlette.responses import JSONResponse

from llmserve.common.errors import InvalidArgument, LLMServeError

from ..generation import GenerationService
from ..routing.catalog import ModelProfile
from .openai_format import _messages, json_object

_TOKENIZE_FIELDS = frozenset({"model", "prompt", "messages", "add_special_tokens"})
_DETOKENIZE_FIELDS = frozenset({"model", "tokens"})


class TokenizeApi:
    def __init__(self, service: GenerationService, read_body, error_response):
        self.service = service
        self.read_body = read_body  # the API's bounded, content-type-checked body reader
        self.error_response = error_response

    async def tokenize(self, request: Request):
        return await self._answer(request, _TOKENIZE_FIELDS, _tokenize)

    async def detokenize(self, request: Request):
        return await self._answer(request, _DETOKENIZE_FIELDS, _detokenize)

    async def _answer(self, request: Request, fields: frozenset[str], handler):
        try:
            body = json_object(await self.read_body(request), "the request body")
            unknown = sorted(set(body) - fields)
            if unknown:
                raise InvalidArgument(f"unrecognized request argument {unknown[0][:100]!r}", param=unknown[0][:100])
            model = await self._model(request.headers.get("authorization"), body.get("model"))
            return JSONResponse(handler(model, body))
        except LLMServeError as e:
            return self.error_response(e)

    async def _model(self, authorization: str | None, name) -> ModelProfile:
        identity = await self.service.identify(authorization)
        if not isinstance(name, str) or not name:
            raise InvalidArgument("model is required", param="model")
        route = await self.service.router.route(name, identity.tenant, uuid.uuid4().hex)
        identity.check_model(route.requested)
        return route.model


def _tokenize(model: ModelProfile, body: dict) -> dict:
    prompt, messages = body.get("prompt"), body.get("messages")
    if (prompt is None) == (messages is None):
        raise InvalidArgument("give exactly one of prompt or messages", param="prompt")
    if messages is not None:
        if "add_special_tokens" in body:
            raise InvalidArgument("add_special_tokens applies to prompt only", param="add_special_tokens")
        ids = model.encode_chat(_messages(messages))
    else:
        if not isinstance(prompt, str):
            raise InvalidArgument("prompt must be a string", param="prompt")
        special = body.get("add_special_tokens", True)
        if not isinstance(special, bool):
            raise InvalidArgument("add_special_tokens must be a boolean", param="add_special_tokens")
        ids = model.encode_prompt(prompt) if special else model.tokenizer.encode(prompt, add_special_tokens=False)
    return {"tokens": list(ids), "count": len(ids), "max_model_len": model.context_length}


def _detokenize(model: ModelProfile, body: dict) -> dict:
    tokens = body.get("tokens")
    vocab = len(model.tokenizer)
    if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
        raise InvalidArgument("tokens must be a list of token ids", param="tokens")
    if len(tokens) > 4 * model.context_length:
        raise InvalidArgument(f"at most {4 * model.context_length} tokens", param="tokens")
    bad = next((t for t in tokens if not 0 <= t < vocab), None)
    if bad is not None:
        raise InvalidArgument(f"token id {bad} is outside the vocabulary (0..{vocab - 1})", param="tokens")
    return {"prompt": model.tokenizer.decode(tokens)}
