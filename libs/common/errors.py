"""Domain errors and the one table that maps them to gRPC status codes.

Domain code raises these; the one error path every gRPC port has (`rpc_errors`, installed by
`GrpcApp`) turns them into statuses, and the HTTP API into HTTP statuses. Anything else that
escapes is a bug and becomes INTERNAL (logged once, with its traceback and a request id).
"""

from __future__ import annotations

import grpc


class LLMServeError(Exception):
    """Base of all errors a client may see."""

    def __init__(self, message: str, *, retry_after_s: float | None = None):
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s


class Unauthenticated(LLMServeError):
    """No credentials, or credentials that do not check out."""


class PermissionDenied(LLMServeError):
    """A valid identity without access to what it asked for."""


class InvalidArgument(LLMServeError):
    """The request breaks a documented limit; the message names it, and `param` the request
    field at fault when there is one (the OpenAI error body's `param`)."""

    def __init__(self, message: str, *, param: str | None = None, retry_after_s: float | None = None):
        super().__init__(message, retry_after_s=retry_after_s)
        self.param = param


class PayloadTooLarge(InvalidArgument):
    """The body is over max_request_bytes (HTTP 413)."""


class UnsupportedMediaType(InvalidArgument):
    """The body is not declared as JSON (HTTP 415)."""


class ModelNotFound(LLMServeError):
    """The model is not served here."""


class RequestNotFound(LLMServeError):
    """A re-attach names a request this system does not know (or whose result expired)."""


class AlreadyExists(LLMServeError):
    """The request_id was used before: a retry never starts a second generation."""


class RateLimited(LLMServeError):
    """The tenant is over a limit; retry after `retry_after_s`."""


class Unavailable(LLMServeError):
    """Overloaded queue, draining, or a dependency (Redis) down; retry later."""


class DeadlineExceeded(LLMServeError):
    """The request's deadline passed."""


class Cancelled(LLMServeError):
    """The request was cancelled."""


class GenerationFailed(LLMServeError):
    """The engine failed on this request (e.g. it kept killing workers)."""


class ResourceExhausted(LLMServeError):
    """A server-side budget is used up (e.g. a worker's model memory); free some first."""


class FailedPrecondition(LLMServeError):
    """The system is not in a state to do it (e.g. weights missing or unreadable)."""


STATUS_OF: dict[type[LLMServeError], grpc.StatusCode] = {
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    ModelNotFound: grpc.StatusCode.NOT_FOUND,
    RequestNotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    RateLimited: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    Cancelled: grpc.StatusCode.CANCELLED,
    GenerationFailed: grpc.StatusCode.ABORTED,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
}

# HTTP equivalents for the OpenAI-compatible API.
HTTP_STATUS_OF: dict[type[LLMServeError], int] = {
    PayloadTooLarge: 413,
    UnsupportedMediaType: 415,
    Unauthenticated: 401,
    PermissionDenied: 403,
    InvalidArgument: 400,
    ModelNotFound: 404,
    RequestNotFound: 404,
    AlreadyExists: 409,
    RateLimited: 429,
    Unavailable: 503,
    DeadlineExceeded: 504,
    Cancelled: 499,
    GenerationFailed: 500,
    ResourceExhausted: 507,
    FailedPrecondition: 400,
}

# OpenAI-style error `type` and `code` for the HTTP API's `{"error": {...}}` bodies.
OPENAI_ERROR_OF: dict[type[LLMServeError], tuple[str, str]] = {
    Unauthenticated: ("authentication_error", "invalid_api_key"),
    PermissionDenied: ("permission_error", "model_not_allowed"),
    InvalidArgument: ("invalid_request_error", "invalid_argument"),
    ModelNotFound: ("invalid_request_error", "model_not_found"),
    RequestNotFound: ("invalid_request_error", "request_not_found"),
    AlreadyExists: ("invalid_request_error", "duplicate_request_id"),
    RateLimited: ("rate_limit_error", "rate_limit_exceeded"),
    Unavailable: ("server_error", "unavailable"),
    DeadlineExceeded: ("timeout_error", "deadline_exceeded"),
    Cancelled: ("cancelled", "cancelled"),
    GenerationFailed: ("server_error", "generation_failed"),
    ResourceExhausted: ("server_error", "resource_exhausted"),
    FailedPrecondition: ("invalid_request_error", "failed_precondition"),
}

RETRY_AFTER_KEY = "retry-after-ms"
#: Longest error message sent to a client: gRPC trailers hold 16 KB in all, and a message that
#: overflows them turns the real status into RESOURCE_EXHAUSTED.
MAX_MESSAGE_CHARS = 2048


def echo(value: str, limit: int = 80) -> str:
    """User input quoted in an error message: a bounded prefix, with the full length when cut."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} characters)"


def bounded(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE_CHARS else message[:MAX_MESSAGE_CHARS] + "..."


def http_status_for(error: LLMServeError) -> int:
    for cls in type(error).__mro__:
        if cls in HTTP_STATUS_OF:
            return HTTP_STATUS_OF[cls]
    return 500


def openai_error_of(error: LLMServeError) -> tuple[str, str]:
    """(type, code) of an OpenAI-shaped error body for `error`."""
    for cls in type(error).__mro__:
        if cls in OPENAI_ERROR_OF:
            return OPENAI_ERROR_OF[cls]
    return ("server_error", "internal_error")


def status_code_for(error: LLMServeError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        if cls in STATUS_OF:
            return STATUS_OF[cls]
    return grpc.StatusCode.INTERNAL


async def abort_with(context: grpc.aio.ServicerContext, error: LLMServeError) -> None:
    """Abort an RPC with the status of `error` (and the retry delay as trailing metadata)."""
    if error.retry_after_s is not None:
        context.set_trailing_metadata(((RETRY_AFTER_KEY, str(int(error.retry_after_s * 1000))),))
    await context.abort(status_code_for(error), bounded(error.message))
