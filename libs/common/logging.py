"""structlog set up once per process: JSON in production, readable in a terminal.

Request-scoped fields (request_id, tenant, model, trace_id) are bound with
`structlog.contextvars.bound_contextvars` and appear on every line logged inside.
Prompts and credentials are never logged.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator, Mapping

import structlog
from opentelemetry import trace


def configure_logging(service: str, fmt: str = "console", level: str = "info") -> None:
    renderer: structlog.types.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)


def get_logger(name: str | None = None) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)


#: The fields that tie a log line to its request (and, through trace_id, to its spans).
REQUEST_FIELDS = ("request_id", "trace_id", "tenant", "model")


def trace_id_of(carrier: Mapping[str, str] | None = None, span: trace.Span | None = None) -> str:
    """The 32-hex trace id of `span`, of a W3C `traceparent` carried in a message, or ""."""
    if span is not None:
        ctx = span.get_span_context()
        return format(ctx.trace_id, "032x") if ctx.is_valid else ""
    parts = (carrier or {}).get("traceparent", "").split("-")
    return parts[1] if len(parts) == 4 else ""


def bind_request(request_id: str, trace_id: str, tenant: str, model: str) -> None:
    """Bind a request's fields for the rest of this task (an edge handler's own task)."""
    structlog.contextvars.bind_contextvars(request_id=request_id, trace_id=trace_id, tenant=tenant, model=model)


@contextlib.contextmanager
def request_context(request_id: str, trace_id: str, tenant: str, model: str) -> Iterator[None]:
    """Bind a request's fields for a block (a loop serving many requests), then restore."""
    with structlog.contextvars.bound_contextvars(request_id=request_id, trace_id=trace_id, tenant=tenant,
                                                 model=model):
        yield
