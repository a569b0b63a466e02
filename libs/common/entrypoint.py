"""The one entrypoint every service's `__main__` calls: settings, logging, tracing, serve."""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import Callable
from typing import TypeVar

from .internal_auth import ROLES, InternalAuth
from .logging import configure_logging
from .metrics import install_process_metrics
from .server import GrpcApp, Service
from .settings import ServiceSettings
from .telemetry import configure_telemetry, shutdown_telemetry

S = TypeVar("S", bound=ServiceSettings)


def run_service(name: str, settings_cls: type[S], make_service: Callable[[S], Service]) -> None:
    """Validate settings, set up logging and telemetry, serve until SIGTERM, drain. A fatal
    failure of a supervised task exits with status 1, so the orchestrator restarts us."""
    settings = settings_cls()
    configure_logging(name, settings.log_format, settings.log_level)
    ident = getattr(settings, f"{name}_id", "") or socket.gethostname()
    auth = InternalAuth.from_settings(settings, name if name in ROLES else "operator", ident)
    configure_telemetry(name, settings.otlp_endpoint, auth=auth)
    install_process_metrics()

    async def serve() -> int:
        return await GrpcApp(make_service(settings), settings).run_until_signalled()

    try:
        code = asyncio.run(serve())
    finally:
        shutdown_telemetry()
    if code:
        sys.exit(code)
