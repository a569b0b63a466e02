"""The one error path of every RPC, installed by `GrpcApp` on every port of every service.

Servicers raise domain errors (`llmserve.common.errors`) and never call `context.abort`
themselves. The interceptor here wraps every method handler once:

- an `LLMServeError` answers the status of the one error table (and the retry delay as
  trailing metadata);
- any other exception is a bug: it is logged once, with its traceback and a request id,
  and answers INTERNAL naming that id (so a report can be matched with the log line);
- a request that cannot be decoded (corrupt protobuf, invalid UTF-8 in a string field)
  answers INVALID_ARGUMENT. grpcio's own deserializer failure answers UNKNOWN, so the
  handler's deserializer is wrapped to hand the failure to the servicer wrapper instead.
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from .errors import InvalidArgument, LLMServeError, abort_with
from .logging import get_logger

log = get_logger(__name__)

REQUEST_ID_KEY = "x-request-id"


class _Undecodable:
    """What the wrapped deserializer returns for bytes it cannot parse."""

    def __init__(self, error: Exception):
        self.error = error


def _deserializer(inner: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if inner is None:
        return None

    def deserialize(raw: bytes) -> Any:
        try:
            return inner(raw)
        except Exception as e:  # DecodeError, or a UTF-8 error from a string field
            return _Undecodable(e)

    return deserialize


def _checked(request: Any) -> Any:
    if isinstance(request, _Undecodable):
        raise InvalidArgument(f"the request could not be decoded: {request.error}")
    return request


async def _checked_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        yield _checked(request)


def _request_id(request: Any, context: grpc.aio.ServicerContext) -> str:
    """The caller's request id when it sent one (field or metadata), else a new one."""
    rid = getattr(request, "request_id", "")
    if isinstance(rid, str) and rid:
        return rid
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_KEY and value:
            return str(value)
    return uuid.uuid4().hex


async def _fail(error: BaseException, request: Any, context: grpc.aio.ServicerContext, method: str) -> None:
    """Answer `error` with its status; re-raise what is not ours to answer."""
    if isinstance(error, grpc.aio.AbortError):
        raise error  # a servicer (or a deeper layer) already answered
    if isinstance(error, LLMServeError):
        await abort_with(context, error)  # raises AbortError: the status is sent
    rid = _request_id(request, context)
    log.error("unexpected error in an RPC", method=method, request_id=rid, exc_info=error)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error (request id {rid})")


def _unary_behavior(inner: Callable[..., Awaitable[Any]], streaming_in: bool, method: str):
    async def behavior(request, context):
        try:
            return await inner(_checked_stream(request) if streaming_in else _checked(request), context)
        except Exception as e:
            await _fail(e, None if streaming_in else request, context, method)

    return behavior


def _streaming_behavior(inner: Callable[..., AsyncIterator[Any]], streaming_in: bool, method: str):
    async def behavior(request, context):
        try:
            async for response in inner(_checked_stream(request) if streaming_in else _checked(request), context):
                yield response
        except Exception as e:
            await _fail(e, None if streaming_in else request, context, method)

    return behavior


def wrap_handler(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    """`handler` with the shared error path and a deserializer that cannot answer UNKNOWN."""
    kind = (handler.request_streaming, handler.response_streaming)
    inner = {
        (False, False): handler.unary_unary,
        (False, True): handler.unary_stream,
        (True, False): handler.stream_unary,
        (True, True): handler.stream_stream,
    }[kind]
    # A streaming response may be an async generator, or a coroutine writing with context.write.
    wrap = _streaming_behavior if inspect.isasyncgenfunction(inner) else _unary_behavior
    behavior = wrap(inner, handler.request_streaming, method)
    factory = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[kind]
    return factory(behavior, request_deserializer=_deserializer(handler.request_deserializer),
                   response_serializer=handler.response_serializer)


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Puts every method of the server on the one error path (each handler wrapped once)."""

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is None or cached[0] is not handler:
            cached = self._wrapped[method] = (handler, wrap_handler(handler, method))
        return cached[1]
