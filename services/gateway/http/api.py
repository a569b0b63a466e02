"""The OpenAI-compatible HTTP API: a thin adapter over GenerationService, like the servicer.

`/v1/chat/completions` and `/v1/completions` (whole, or `stream: true` as server-sent
events), `/v1/models`, and the WebSocket stream (ws_api). Errors are OpenAI-shaped with
the HTTP status of the one error table; 429 and 503 carry Retry-After. A client that
disconnects cancels its request: the event iterator is closed, which cancels it everywhere.
"""

from __future__ import annotations

import asyncio
import json
import math
import uuid

from pydantic_core import PydanticSerializationError
from pydantic_core import to_json as _encode
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute

from llmserve.common.errors import (
    RETRY_AFTER_KEY,
    InvalidArgument,
    LLMServeError,
    PayloadTooLarge,
    UnsupportedMediaType,
    echo,
)
from llmserve.common.logging import get_logger
from llmserve.common.metrics_http import HealthState

from ..admission.auth import single_authorization
from ..admission.validation import GenerateParams
from ..choices import admit_all, expand, merged
from ..generation import GenerationService
from ..routing.model_list import ModelStatus
from ..streams.inflight import TokenEvent
from .openai_format import OpenAIRequest, error_body, parse_body
from .ops import ops_routes
from .protocol import ErrorBody, ErrorInfo, ResponseModel
from .response_builder import ChoiceResult, ResponseBuilder
from .tokenize import TokenizeApi
from .websocket import websocket_endpoint

log = get_logger(__name__)
_TIMEOUT_HEADER = "x-request-timeout"  # seconds; the HTTP stand-in for a gRPC deadline


def error_response(error: LLMServeError) -> JSONResponse:
    status, body = error_body(error)
    return JSONResponse(body, status_code=status, headers=retry_headers(error))


def retry_headers(error: LLMServeError) -> dict[str, str]:
    if error.retry_after_s is None:
        return {}
    return {
        "retry-after": str(max(1, math.ceil(error.retry_after_s))),
        RETRY_AFTER_KEY: str(int(error.retry_after_s * 1000)),
    }


def build_app(service: GenerationService, health: HealthState | None = None) -> Starlette:
    """The Starlette app serving `service` over HTTP and WebSocket (and /metrics, /health)."""
    api = _Api(service)
    tokens = TokenizeApi(service, api.read_body, error_response)
    routes = [
        Route("/tokenize", tokens.tokenize, methods=["POST"]),
        Route("/detokenize", tokens.detokenize, methods=["POST"]),
        Route("/v1/chat/completions", api.chat, methods=["POST"]),
        Route("/v1/completions", api.completions, methods=["POST"]),
        Route("/v1/models", api.models, methods=["GET"]),
        WebSocketRoute("/v1/ws", lambda ws: websocket_endpoint(ws, service)),
        *ops_routes(health or HealthState(serving=True)),
    ]
    return Starlette(
        routes=routes, exception_handlers={HTTPException: _http_error, Exception: _internal_error}
    )


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    body = ErrorBody(error=ErrorInfo(message=str(exc.detail), type=kind, code=str(exc.status_code), param=None))
    return JSONResponse(body.model_dump(), status_code=exc.status_code)


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error in the HTTP API", path=request.url.path)
    body = ErrorBody(error=ErrorInfo(message="internal error", type="server_error", code="internal_error", param=None))
    return JSONResponse(body.model_dump(), status_code=500)


class _Api:
    def __init__(self, service: GenerationService):
        self.service = service
        self.max_bytes = service.settings.max_request_bytes

    async def chat(self, request: Request):
        return await self._completion(request, chat=True)

    async def completions(self, request: Request):
        return await self._completion(request, chat=False)

    async def models(self, request: Request):
        try:
            identity = await self.service.identify(single_authorization(request.headers.getlist("authorization")))
        except LLMServeError as e:
            return error_response(e)
        models = await self.service.list_models()
        data = [
            {
                "id": m.name,
                "object": "model",
                "created": 0,
                "owned_by": "llmserve",
                "context_length": m.context_length,
                "ready_workers": m.ready_workers,
                "workers": m.worker_ids,
                **(_registry_fields(m) if m.registry else {}),
            }
            for m in models
            if identity.may_see(m.name)
        ]
        return JSONResponse({"object": "list", "data": data})

    async def _completion(self, request: Request, *, chat: bool):
        try:
            body = await self.read_body(request)
        except ClientDisconnect:
            # The client left while sending its body: nobody reads an answer, nothing failed here.
            log.debug("client disconnected before its request was read", path=request.url.path)
            return Response(status_code=400)
        except LLMServeError as e:
            return error_response(e)
        try:
            parsed = parse_body(body, chat=chat)
            resume_from_last_event(parsed.params, request.headers.get("last-event-id"))
            timeout = _timeout(request.headers.get(_TIMEOUT_HEADER))
            if not parsed.params.request_id:
                parsed.params.request_id = uuid.uuid4().hex
            per_prompt = "best_of" if parsed.best_of > parsed.n else "n"
            choices = expand(parsed.params, parsed.prompts, parsed.best_of, per_prompt)
            jobs = await admit_all(self.service, single_authorization(request.headers.getlist("authorization")),
                                   choices)
        except LLMServeError as e:
            return error_response(e)
        echo = None
        if parsed.echo:
            tok = jobs[0].tokenizer
            echo = [(p.prompt if p.prompt is not None else tok.decode(job.prompt_token_ids), job.prompt_token_ids[0])
                    for p, job in zip(choices, jobs, strict=True)]
        builder = ResponseBuilder(parsed, parsed.params.request_id, jobs[0].model, jobs[0].tokenizer, echo)
        events = merged(self.service, jobs, timeout)
        if parsed.stream:
            # Last-Event-ID re-attach names one request: streams of n > 1 choices carry no ids.
            return EventStreamResponse(events, builder, parsed, len(jobs), jobs[0].request_id if len(jobs) == 1 else "")
        return WholeResponse(events, builder, len(jobs))

    async def read_body(self, request: Request) -> bytes:
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type and media_type != "application/json" and not media_type.endswith("+json"):
            raise UnsupportedMediaType(f"the body must be application/json, not {echo(media_type, 60)}",
                                       param="content-type")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise PayloadTooLarge(f"the body is over max_request_bytes ({self.max_bytes})")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_bytes:
                raise PayloadTooLarge(f"the body is over max_request_bytes ({self.max_bytes})")
            chunks.append(chunk)
        return b"".join(chunks)


def _registry_fields(m: ModelStatus) -> dict:
    """A registry model's aliases and served versions in `/v1/models` (extra fields, which the
    OpenAI SDKs ignore; any served id `name@vN` is a valid `model` too)."""
    return {
        "registry": True,
        "aliases": {a.alias: {"version": a.version, "split": a.split} for a in m.aliases},
        "versions": [{"id": v.served_id, "ready_workers": v.ready_workers, "workers": v.worker_ids}
                     for v in m.versions],
    }  # fmt: skip


def resume_from_last_event(params: GenerateParams, last_event_id: str | None) -> None:
    """SSE `Last-Event-ID: <request_id>:<index>` (our event ids) re-attaches like the body's
    `request_id` + `resume_from_index`; the body's, when set, must agree."""
    if not last_event_id:
        return
    request_id, sep, index = last_event_id.strip().rpartition(":")
    if not sep or not request_id or not index.isdigit():
        raise InvalidArgument("Last-Event-ID must be `<request_id>:<index>` as this gateway's events carry it")
    if params.request_id and params.request_id != request_id:
        raise InvalidArgument("Last-Event-ID names another request than request_id")
    params.request_id = request_id
    if params.resume_from_index is None:
        params.resume_from_index = int(index)


def _timeout(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise InvalidArgument(f"{_TIMEOUT_HEADER} must be a positive number of seconds")
    return seconds


class _Disconnectable:
    """An ASGI response that runs `produce` until it ends or the client disconnects."""

    def __init__(self, events):
        self.events = events

    async def __call__(self, scope, receive, send) -> None:
        producer = asyncio.create_task(self.produce(send))
        watcher = asyncio.create_task(_disconnected(receive))
        try:
            await asyncio.wait({producer, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (producer, watcher):
                task.cancel()
            await asyncio.gather(producer, watcher, return_exceptions=True)
            await self.events.aclose()  # a client gone mid-request cancels it everywhere
        if producer.done() and not producer.cancelled() and producer.exception():
            raise producer.exception()

    async def produce(self, send) -> None:
        raise NotImplementedError


async def _disconnected(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def to_json(obj: dict | ResponseModel) -> bytes:
    """A body or chunk as JSON: pydantic's encoder (about half json.dumps's time per chunk); a
    string it cannot encode (a lone surrogate echoed from a request) falls back to json.dumps."""
    if isinstance(obj, ResponseModel):
        return obj.dump()
    try:
        return _encode(obj, inf_nan_mode="constants")  # -Infinity as json.dumps writes it
    except PydanticSerializationError:
        return json.dumps(obj).encode()


async def _send_json(send, status: int, body: dict | ResponseModel, headers: dict[str, str] | None = None) -> None:
    payload = to_json(body)
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})


class WholeResponse(_Disconnectable):
    """A non-streaming completion: collect the text, answer once."""

    def __init__(self, events, builder: ResponseBuilder, count: int):
        super().__init__(events)
        self.builder = builder
        self.count = count

    async def produce(self, send) -> None:
        results = {i: ChoiceResult() for i in range(self.count)}
        finished = 0
        try:
            async for index, event in self.events:
                if isinstance(event, TokenEvent):
                    results[index].text.append(event.text)
                    results[index].logprobs.extend(event.logprobs or ())
                    if event.prompt_logprobs is not None:
                        results[index].prompt_logprobs = event.prompt_logprobs
                    continue
                results[index].finish, finished = event, finished + 1
                if finished == self.count:
                    await _send_json(send, 200, self.builder.whole(results))
                    return
        except LLMServeError as e:
            status, body = error_body(e)
            await _send_json(send, status, body, retry_headers(e))


class EventStreamResponse(_Disconnectable):
    """`stream: true`: server-sent events, `data: {chunk}` ... `data: [DONE]`.

    Headers wait for the first event, so an error before any token still gets its own
    HTTP status; an error after that arrives as a `data: {"error": ...}` event.
    """

    def __init__(self, events, builder: ResponseBuilder, request: OpenAIRequest, count: int, request_id: str = ""):
        super().__init__(events)
        self.builder = builder
        self.chat = request.chat
        self.count = count
        self.request_id = request_id

    async def produce(self, send) -> None:
        started = False
        finished = 0
        try:
            async for index, event in self.events:
                if not started:
                    started = True
                    await self._start(send)
                if isinstance(event, TokenEvent):
                    chunk = self.builder.chunk(index, event)
                    if chunk is not None:  # None: held back as a possible tool call
                        # The id is where a re-attach continues (`Last-Event-ID`, docs/reattach.md).
                        event_id = f"{self.request_id}:{event.index + len(event.token_ids)}" if self.request_id else ""
                        await _data(send, chunk, event_id)
                else:
                    finished += 1
                    for chunk in self.builder.final_chunks(index, event, last=finished == self.count):
                        await _data(send, chunk)
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
        except LLMServeError as e:
            status, body = error_body(e)
            if not started:
                await _send_json(send, status, body, retry_headers(e))
                return
            await _data(send, body)
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _start(self, send) -> None:
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if self.chat:
            for index in range(self.count):
                await _data(send, self.builder.chunk(index, None, first=True))
        for chunk in self.builder.echo_chunks():
            await _data(send, chunk)


async def _data(send, obj: dict, event_id: str = "") -> None:
    head = f"id: {event_id}\n".encode() if event_id else b""
    await send(
        {
            "type": "http.response.body",
            "body": head + b"data: " + to_json(obj) + b"\n\n",
            "more_body": True,
        }
    )
