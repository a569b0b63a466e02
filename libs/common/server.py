"""The one gRPC server bootstrap every service uses.

It adds grpc.health.v1 and reflection, applies keepalive and message-size limits, and
shuts down in the order that loses nothing: health NOT_SERVING -> the service drains
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

    # Optional: `supervisor` (a `supervise.Supervisor` whose fatal failures stop the server with
    # exit code 1) and `async fail()` (on such a failure, instead of drain: stop taking work and
    # let peers take over what is held here).


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
        self.server = grpc.aio.server(options=server_options(settings))
        self.port = 0
        self._stopped = asyncio.Event()
        #: 1 once a supervised task failed fatally: the process should exit non-zero.
        self.exit_code = 0
        self._failed = asyncio.Event()
        self._failing: asyncio.Task | None = None
        supervisor = getattr(service, "supervisor", None)
        if supervisor is not None:
            supervisor.on_fatal = self._on_fatal

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
        # grpc_health answers SERVING for "" until told otherwise: not while models still load.
        for name in ("", *self.service.service_names):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
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

    def _on_fatal(self, task: str, error: BaseException) -> None:
        if self._failing is None:
            self._failing = asyncio.ensure_future(self.fail(f"{task}: {type(error).__name__}: {error}"))

    async def fail(self, reason: str) -> None:
        """A fatal failure: NOT_SERVING at once, the service hands its work on (no drain: what
        failed may be what a drain waits for), stop, exit code 1."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.exit_code = 1
        log.error("fatal failure; stopping", reason=reason)
        await self.health.enter_graceful_shutdown()
        hand_over = getattr(self.service, "fail", None)
        if hand_over is not None:
            try:
                await asyncio.wait_for(hand_over(), self.settings.drain_seconds)
            except Exception as e:  # still exit: the orchestrator restarts us
                log.warning("hand-over after a fatal failure failed", error=f"{type(e).__name__}: {e}")
        try:
            await self.server.stop(grace=0.5)
            await self.service.close()
        finally:
            self._failed.set()  # exit whatever closing raised
        log.info("stopped")

    async def wait_failed(self) -> None:
        """Until a fatal failure has stopped this app (tests)."""
        await self._failed.wait()

    async def __aenter__(self) -> GrpcApp:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        if self._failing is not None:
            await self._failing
        await self.stop()

    async def run_until_signalled(self) -> int:
        """Serve until SIGTERM or SIGINT, then stop gracefully; or until a fatal failure.
        Returns the exit code (0, or 1 after a fatal failure)."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        signalled = asyncio.ensure_future(stop.wait())
        failed = asyncio.ensure_future(self._failed.wait())
        await asyncio.wait([signalled, failed], return_when=asyncio.FIRST_COMPLETED)
        for waiter in (signalled, failed):
            waiter.cancel()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
        if self._failing is not None:
            await self._failing
        else:
            log.info("signal received")
            await self.stop()
        return self.exit_code
