"""The OpenAI error body: `{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

from .common import ResponseModel


class ErrorInfo(ResponseModel):
    message: str
    type: str  # invalid_request_error, authentication_error, rate_limit_error, server_error, ...
    param: str | None = None  # the request field at fault, as a path (`messages[0].content`)
    code: str | None = None


class ErrorBody(ResponseModel):
    error: ErrorInfo
