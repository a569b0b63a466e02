"""The one gRPC server bootstrap every service uses.

It adds grpc.health.v1 and reflection, applies keepalive and message-size limits, puts every
RPC on the one error path (`rpc_errors`: domain errors -> their status, bugs -> INTERNAL with a
request id, undecodable requests -> INVALID_ARGUMENT), and shuts down in the order that loses nothing: health NOT_SERVING -> the service drains
in-flight work (bounded by settings.drain_seconds) -> server.stop(grace) -> close.
Tests use `GrpcApp` as an async context manager on port 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Protocol

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from .logging import get_logger
from .rpc_errors import ErrorInterceptor
from .settings import ServiceSettings

log = get_logger(__name__)


class Service(Protocol):
    """What a service plugs into the bootstrap."""

    #: Full names of the gRPC services it registers (for health and reflection).
    service_names: tuple[str, ...]

    def register(self, server: grpc.aio.Server) -> None:
        """Add servicers to the server (before it starts)."""

    async def start(self, bound_port: int) -> None:
        """Start background work once the port is bound."""

    async def drain(self) -> None:
        """Finish or hand back in-flight work; the bootstrap bounds how long it may take."""

    async def close(self) -> None:
        """Release connections; the server is stopped by now."""


def server_options(settings: ServiceSettings) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ("grpc.http2.max_pings_without_data", 0),
    ]


class GrpcApp:
    """A service on a gRPC server with health, reflection and graceful drain."""

    def __init__(self, service: Service, settings: ServiceSettings,
                 credentials: grpc.ServerCredentials | None = None):
        self.service = service
        self.settings = settings
        # TLS for the port: given here, or offered by the service as `server_credentials`.
        self.credentials = credentials or getattr(service, "server_credentials", None)
        self.health = HealthServicer()
        self.server = grpc.aio.server(interceptors=[ErrorInterceptor()], options=server_options(settings))
        self.port = 0
        self._stopped = asyncio.Event()

    async def start(self) -> int:
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.service.register(self.server)
        names = (*self.service.service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                 reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, self.server)
        if self.credentials is not None:
            self.port = self.server.add_secure_port(self.settings.address, self.credentials)
        else:
            self.port = self.server.add_insecure_port(self.settings.address)
        if self.port == 0:
            raise RuntimeError(f"could not bind {self.settings.address}")
        await self.server.start()
        await self.service.start(self.port)
        for name in ("", *self.service.service_names):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("serving", address=f"{self.settings.host}:{self.port}")
        return self.port

    async def stop(self) -> None:
        """NOT_SERVING -> bounded drain -> stop the server -> close the service."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        await self.health.enter_graceful_shutdown()
        log.info("draining", seconds=self.settings.drain_seconds)
        try:
            await asyncio.wait_for(self.service.drain(), self.settings.drain_seconds)
        except TimeoutError:
            log.warning("drain timed out; stopping with work in flight")
        await self.server.stop(grace=1.0)
        await self.service.close()
        log.info("stopped")

    async def __aenter__(self) -> GrpcApp:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    async def run_until_signalled(self) -> None:
        """Serve until SIGTERM or SIGINT, then stop gracefully."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        await stop.wait()
        log.info("signal received")
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
        await self.stop()
