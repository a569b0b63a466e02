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

from .internal_auth import InternalAuth, InternalAuthInterceptor, Policy
from .logging import get_logger
from .metrics_http import HealthState, MetricsServer
from .redis_acl import check_credentials
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


def internal_server(settings: ServiceSettings, auth: InternalAuth, policy: Policy) -> grpc.aio.Server:
    """A gRPC server for internal services: every call authenticated against `policy`."""
    return grpc.aio.server(options=server_options(settings), interceptors=[InternalAuthInterceptor(auth, policy)])


def bind_internal(server: grpc.aio.Server, auth: InternalAuth, host: str, port: int, what: str) -> int:
    """Bind an internal port: mutual TLS when configured, loopback only when nothing authenticates."""
    auth.check_bind(host, what)
    credentials = auth.server_credentials()
    address = f"{host}:{port}"
    bound = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    if bound == 0:
        raise RuntimeError(f"could not bind {address}")
    return bound


def server_options(settings: ServiceSettings) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ("grpc.http2.max_pings_without_data", 0),
        # Sockets that never speak HTTP/2, idle connections, and floods of them (slowloris).
        ("grpc.server_handshake_timeout_ms", int(settings.grpc_handshake_timeout_s * 1000)),
        ("grpc.max_connection_idle_ms", int(settings.grpc_idle_timeout_s * 1000)),
        *([("grpc.max_allowed_incoming_connections", settings.grpc_max_connections)]
          if settings.grpc_max_connections else []),
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
        # /health over HTTP follows grpc health; a service with its own HTTP port serving
        # /metrics (the gateway) offers its state, the others get `metrics_port`.
        self.health_state: HealthState = getattr(service, "health_state", None) or HealthState()
        self.metrics_http: MetricsServer | None = None
        if settings.metrics_port is not None and not getattr(service, "serves_metrics", False):
            self.metrics_http = MetricsServer(settings.host, settings.metrics_port, self.health_state)
        # An internal service (one declaring `internal_policy`) authenticates every call.
        auth: InternalAuth | None = getattr(service, "internal_auth", None)
        policy = getattr(service, "internal_policy", None)
        self.internal_auth = auth if policy is not None else None
        if auth is not None and policy is not None:
            self.server = internal_server(settings, auth, policy)
        else:
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
        redis = getattr(self.service, "redis", None)
        if redis is not None:  # wrong REDIS_URL credentials: refuse to start, saying so
            await check_credentials(redis, self.settings.redis_url)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.service.register(self.server)
        names = (*self.service.service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                 reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, self.server)
        if self.internal_auth is not None:
            self.port = bind_internal(self.server, self.internal_auth, self.settings.host, self.settings.port,
                                      f"{type(self.service).__name__} (LLMSERVE_*_HOST)")
        elif self.credentials is not None:
            self.port = self.server.add_secure_port(self.settings.address, self.credentials)
        else:
            self.port = self.server.add_insecure_port(self.settings.address)
        if self.port == 0:
            raise RuntimeError(f"could not bind {self.settings.address}")
        # grpc_health answers SERVING for "" until told otherwise: not while models still load.
        for name in ("", *self.service.service_names):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()
        bind_health = getattr(self.service, "bind_health", None)
        if bind_health is not None:  # a service whose own checks can turn it NOT_SERVING
            bind_health(self.health)
        await self.service.start(self.port)
        for name in ("", *self.service.service_names):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.health_state.serving = True
        if self.metrics_http is not None:
            await self.metrics_http.start()
        log.info("serving", address=f"{self.settings.host}:{self.port}")
        return self.port

    async def stop(self) -> None:
        """NOT_SERVING -> bounded drain -> stop the server -> close the service."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        await self.health.enter_graceful_shutdown()
        self.health_state.serving = False
        log.info("draining", seconds=self.settings.drain_seconds)
        try:
            await asyncio.wait_for(self.service.drain(), self.settings.drain_seconds)
        except TimeoutError:
            log.warning("drain timed out; stopping with work in flight")
        await self.server.stop(grace=1.0)
        await self.service.close()
        if self.metrics_http is not None:
            await self.metrics_http.stop()
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
