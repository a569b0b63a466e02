"""The one gRPC server bootstrap every service uses.

On every port (the main one and a service's extra ports) it adds grpc.health.v1 and
reflection (v1 and v1alpha), applies keepalive and message-size limits, and puts every RPC
on the one error path (`rpc_errors`: domain errors -> their status, bugs -> INTERNAL with a
request id, undecodable requests -> INVALID_ARGUMENT). It shuts down in the order that loses
nothing: health NOT_SERVING -> the service drains in-flight work (bounded by
settings.drain_seconds) -> servers stop(grace) -> close.
Tests use `GrpcApp` as an async context manager on port 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from .internal_auth import InternalAuth, InternalAuthInterceptor
from .logging import get_logger
from .metrics_http import HealthState, MetricsServer
from .redis_acl import check_credentials
from .reflection import enable_reflection
from .rpc_errors import ErrorInterceptor
from .settings import ServiceSettings

log = get_logger(__name__)


@dataclass
class ExtraPort:
    """A listener of a service beside its main port (e.g. the gateway's internal token sink).

    It gets the main port's error path, health and reflection (of its own services only)
    and shutdown order; `bound` is the port it got, set before `Service.start` runs.
    """

    name: str  # for logs: "internal", ...
    address: str  # host:port; port 0 picks a free one
    service_names: tuple[str, ...]  # full names of the gRPC services `register` adds
    register: Callable[[grpc.aio.Server], None]
    credentials: grpc.ServerCredentials | None = None  # None: plaintext
    #: Run before the error path on this port only (e.g. authentication of internal callers).
    interceptors: tuple[grpc.aio.ServerInterceptor, ...] = ()
    bound: int = 0


class Service(Protocol):
    """What a service plugs into the bootstrap (subclass it to inherit the defaults)."""

    #: Full names of the gRPC services it registers on the main port (for health and reflection).
    service_names: tuple[str, ...]
    #: TLS for the main port; None: plaintext (the bootstrap's own `credentials` argument wins).
    server_credentials: grpc.ServerCredentials | None = None

    def extra_ports(self) -> list[ExtraPort]:
        """Listeners besides the main port (asked once, before anything is bound)."""
        return []

    def register(self, server: grpc.aio.Server) -> None:
        """Add servicers to the main port's server (before it starts)."""

    async def start(self, bound_port: int) -> None:
        """Start background work once every port is bound."""

    async def drain(self) -> None:
        """Finish or hand back in-flight work; the bootstrap bounds how long it may take."""

    async def close(self) -> None:
        """Release connections; the server is stopped by now."""


def internal_port(name: str, host: str, port: int, service_names: tuple[str, ...],
                  register: Callable[[grpc.aio.Server], None], auth: InternalAuth, policy) -> ExtraPort:
    """An extra port for internal services: every call authenticated against `policy`, mutual
    TLS when configured; refused at once on a non-loopback host while nothing authenticates."""
    auth.check_bind(host, f"the {name} port")
    return ExtraPort(name, f"{host}:{port}", service_names, register, credentials=auth.server_credentials(),
                     interceptors=(InternalAuthInterceptor(auth, policy),))


def server_options(settings: ServiceSettings) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ("grpc.http2.max_pings_without_data", 0),
        # A port another process already holds is an error, not a silent share (grpc sets
        # SO_REUSEPORT by default: two gateways on one internal port would split the workers'
        # token streams between them).
        ("grpc.so_reuseport", 0),
        # Sockets that never speak HTTP/2, idle connections, and floods of them (slowloris).
        ("grpc.server_handshake_timeout_ms", int(settings.grpc_handshake_timeout_s * 1000)),
        ("grpc.max_connection_idle_ms", int(settings.grpc_idle_timeout_s * 1000)),
        *([("grpc.max_allowed_incoming_connections", settings.grpc_max_connections)]
          if settings.grpc_max_connections else []),
    ]


class _Listener:
    """One gRPC server: the interceptors, health and reflection every port has."""

    def __init__(self, settings: ServiceSettings, service_names: tuple[str, ...],
                 register: Callable[[grpc.aio.Server], None],
                 interceptors: tuple[grpc.aio.ServerInterceptor, ...] = ()):
        self.service_names = service_names
        self.register = register
        self.health = HealthServicer()
        self.server = grpc.aio.server(interceptors=[*interceptors, ErrorInterceptor()],
                                      options=server_options(settings))

    def bind(self, address: str, credentials: grpc.ServerCredentials | None) -> int:
        """Register every servicer, then bind `address`; the bound port."""
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.register(self.server)
        enable_reflection((*self.service_names, _HEALTH), self.server)
        if credentials is not None:
            port = self.server.add_secure_port(address, credentials)
        else:
            port = self.server.add_insecure_port(address)
        if port == 0:
            raise RuntimeError(f"could not bind {address}")
        return port

    async def set_health(self, status) -> None:
        for name in ("", *self.service_names):
            await self.health.set(name, status)


_HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


class GrpcApp:
    """A service on a gRPC server (plus its extra ports) with health, reflection, graceful drain,
    and a fatal path for a supervised task that failed (NOT_SERVING, hand-over, exit code 1)."""

    def __init__(self, service: Service, settings: ServiceSettings,
                 credentials: grpc.ServerCredentials | None = None):
        self.service = service
        self.settings = settings
        # TLS for the main port: given here, or offered by the service.
        self.credentials = credentials or service.server_credentials
        # An internal service (one declaring `internal_policy`) authenticates every call on its
        # main port, with mutual TLS when configured (internal_auth).
        auth: InternalAuth | None = getattr(service, "internal_auth", None)
        policy = getattr(service, "internal_policy", None)
        self.internal_auth = auth if policy is not None else None
        interceptors: tuple[grpc.aio.ServerInterceptor, ...] = ()
        if auth is not None and policy is not None:
            interceptors = (InternalAuthInterceptor(auth, policy),)
            self.credentials = credentials or auth.server_credentials()
        self.main = _Listener(settings, service.service_names, service.register, interceptors)
        self.extra = [(port, _Listener(settings, port.service_names, port.register, port.interceptors))
                      for port in service.extra_ports()]
        self.health = self.main.health
        self.server = self.main.server
        # /health over HTTP follows grpc health; a service with its own HTTP port serving
        # /metrics (the gateway) offers its state, the others get `metrics_port`.
        self.health_state: HealthState = getattr(service, "health_state", None) or HealthState()
        self.metrics_http: MetricsServer | None = None
        if settings.metrics_port is not None and not getattr(service, "serves_metrics", False):
            self.metrics_http = MetricsServer(settings.host, settings.metrics_port, self.health_state)
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
        if self.internal_auth is not None:
            self.internal_auth.check_bind(self.settings.host, f"{type(self.service).__name__}'s port (LLMSERVE_*_HOST)")
        self.port = self.main.bind(self.settings.address, self.credentials)
        for port, listener in self.extra:
            port.bound = listener.bind(port.address, port.credentials)
        for listener in self._listeners():
            # grpc_health answers SERVING for "" until told otherwise: not while models still load.
            await listener.set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
            await listener.server.start()
        bind_health = getattr(self.service, "bind_health", None)
        if bind_health is not None:  # a service whose own checks can turn it NOT_SERVING
            bind_health(self.health)
        await self.service.start(self.port)
        for listener in self._listeners():
            await listener.set_health(health_pb2.HealthCheckResponse.SERVING)
        self.health_state.serving = True
        if self.metrics_http is not None:
            await self.metrics_http.start()
        log.info("serving", address=f"{self.settings.host}:{self.port}",
                 **{f"{port.name}_port": port.bound for port, _ in self.extra})
        return self.port

    def _listeners(self) -> list[_Listener]:
        return [self.main, *(listener for _, listener in self.extra)]

    async def _not_serving(self) -> None:
        for listener in self._listeners():
            await listener.health.enter_graceful_shutdown()
        self.health_state.serving = False

    async def stop(self) -> None:
        """NOT_SERVING -> bounded drain -> stop the servers -> close the service."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        await self._not_serving()
        log.info("draining", seconds=self.settings.drain_seconds)
        try:
            await asyncio.wait_for(self.service.drain(), self.settings.drain_seconds)
        except TimeoutError:
            log.warning("drain timed out; stopping with work in flight")
        # The main port first: no new requests; extra ports (the token sink) last, so work
        # drained above could still deliver its final tokens.
        for listener in self._listeners():
            await listener.server.stop(grace=1.0)
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
        await self._not_serving()
        hand_over = getattr(self.service, "fail", None)
        if hand_over is not None:
            try:
                await asyncio.wait_for(hand_over(), self.settings.drain_seconds)
            except Exception as e:  # still exit: the orchestrator restarts us
                log.warning("hand-over after a fatal failure failed", error=f"{type(e).__name__}: {e}")
        try:
            for listener in self._listeners():
                await listener.server.stop(grace=0.5)
            await self.service.close()
            if self.metrics_http is not None:
                await self.metrics_http.stop()
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
