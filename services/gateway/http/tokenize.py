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
from .openai_format import json_object, message_dicts
from .protocol import parse
from .protocol.tokens import DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse


class TokenizeApi:
    def __init__(self, service: GenerationService, read_body, error_response):
        self.service = service
        self.read_body = read_body  # the API's bounded, content-type-checked body reader
        self.error_response = error_response

    async def tokenize(self, request: Request):
        return await self._answer(request, TokenizeRequest, _tokenize)

    async def detokenize(self, request: Request):
        return await self._answer(request, DetokenizeRequest, _detokenize)

    async def _answer(self, request: Request, kind: type[TokenizeRequest | DetokenizeRequest], handler):
        try:
            body = parse(kind, json_object(await self.read_body(request), "the request body"), request.url.path)
            model = await self._model(request.headers.get("authorization"), body.model)
            return JSONResponse(handler(model, body).model_dump())
        except LLMServeError as e:
            return self.error_response(e)

    async def _model(self, authorization: str | None, name) -> ModelProfile:
        identity = await self.service.identify(authorization)
        if not isinstance(name, str) or not name:
            raise InvalidArgument("model is required", param="model")
        route = await self.service.router.route(name, identity.tenant, uuid.uuid4().hex)
        identity.check_model(route.requested)
        return route.model


def _tokenize(model: ModelProfile, body: TokenizeRequest) -> TokenizeResponse:
    if (body.prompt is None) == (body.messages is None):
        raise InvalidArgument("give exactly one of prompt or messages", param="prompt")
    if body.prompt is None:
        assert body.messages is not None
        if body.add_special_tokens is not None:
            raise InvalidArgument("add_special_tokens applies to prompt only", param="add_special_tokens")
        ids = model.encode_chat(message_dicts(body.messages))
    elif body.add_special_tokens is False:
        ids = model.tokenizer.encode(body.prompt, add_special_tokens=False)
    else:
        ids = model.encode_prompt(body.prompt)
    return TokenizeResponse(tokens=list(ids), count=len(ids), max_model_len=model.context_length)


def _detokenize(model: ModelProfile, body: DetokenizeRequest) -> DetokenizeResponse:
    tokens, vocab = body.tokens, len(model.tokenizer)
    if len(tokens) > 4 * model.context_length:
        raise InvalidArgument(f"at most {4 * model.context_length} tokens", param="tokens")
    bad = next((t for t in tokens if not 0 <= t < vocab), None)
    if bad is not None:
        raise InvalidArgument(f"token id {bad} is outside the vocabulary (0..{vocab - 1})", param="tokens")
    return DetokenizeResponse(prompt=model.tokenizer.decode(tokens))
