"""Wires the gateway: settings -> components -> gRPC server (+ HTTP server in the same loop)."""

from __future__ import annotations

import asyncio
import contextlib
import socket

from grpc_health.v1 import health_pb2
from redis.exceptions import RedisError

from llmserve.common import internal_policy, redis_client
from llmserve.common.api_keys import ApiKeyStore
from llmserve.common.gateways import register_gateway, withdraw_gateway
from llmserve.common.internal_auth import InternalAuth
from llmserve.common.logging import get_logger
from llmserve.common.metrics_http import HealthState
from llmserve.common.server import ExtraPort, Service, internal_port
from llmserve.common.supervise import Supervisor
from llmserve.common.tokensink.v1 import token_sink_pb2, token_sink_pb2_grpc
from llmserve.gateway.v1 import generation_pb2, generation_pb2_grpc

from .admission.admission_watch import AdmissionWatchdog
from .admission.auth import Authenticator, StaticKeys
from .admission.jwt_auth import JwtVerifier
from .admission.ratelimit import RateLimiter
from .generation import GenerationService
from .http.api import build_app
from .http.server import OpenAIHttpServer, grpc_server_credentials
from .routing.catalog import ModelCatalog
from .servicer import GenerationServicer, TokenSinkServicer
from .settings import GatewaySettings
from .streams.inflight import InflightRegistry
from .streams.reattach import Reattacher
from .streams.request_queue import RequestQueue
from .streams.sink_authz import SinkAuthorizer

log = get_logger(__name__)


class GatewayService(Service):
    """The gateway as a `llmserve.common.server.Service`.

    The public port (TLS when configured) serves only GenerationService. The workers' token
    sink always listens on its own internal port (`internal_port`), never on the public one,
    with health and reflection of its own like every port; every call there is authenticated
    (libs/common/internal_auth.py) and each worker may touch only the requests placed on it
    (streams/sink_authz.py).
    """

    service_names = (generation_pb2.DESCRIPTOR.services_by_name["GenerationService"].full_name,)

    def __init__(self, settings: GatewaySettings, catalog: ModelCatalog | None = None):
        self.settings = settings
        self.catalog = catalog or ModelCatalog.load(settings.models)
        self.redis = redis_client.connect(settings.redis_url, socket_timeout=settings.redis_timeout_s)
        self.inflight = InflightRegistry()
        self.keys = ApiKeyStore(self.redis, settings.api_key_cache_s)
        jwt = JwtVerifier(settings) if settings.jwt_algorithms else None
        self.auth = Authenticator(StaticKeys(settings.api_keys), self.keys, jwt)
        if not settings.api_keys and not (jwt and jwt.configured):
            log.info("no static API keys or JWT keys configured: only keys from `llmserve keys create` work")
        self.limiter = RateLimiter(settings)
        self.supervisor = Supervisor("gateway")
        self.queue = RequestQueue(self.redis, settings.max_queue_len, min_replicas=settings.redis_min_replicas,
                                  replica_wait_ms=settings.redis_replica_wait_ms)
        self.internal_auth = InternalAuth.from_settings(settings, "gateway", socket.gethostname())
        self.generation = GenerationService(settings, self.auth, self.catalog, self.queue, self.inflight,
                                            self.redis, self.limiter, Reattacher(self.redis, self.internal_auth))
        self.limiter.metrics = self.generation.metrics
        self._health = None
        self.watchdog = AdmissionWatchdog(lambda: self.limiter.oldest_waiting_s, self._set_serving,
                                          settings.admission_stall_s)
        #: Read by the gRPC bootstrap: TLS for the public port when certificates are configured.
        self.server_credentials = grpc_server_credentials(settings)
        #: Moved by the gRPC bootstrap with grpc health; the HTTP port's /health reads it.
        self.health_state = HealthState()
        self.serves_metrics = True  # /metrics is on the HTTP API port, not a metrics_port
        self.http = OpenAIHttpServer(build_app(self.generation, self.health_state), settings)
        self.http_port = 0
        self.token_sink = internal_port(
            "internal", settings.host, settings.internal_port,
            (token_sink_pb2.DESCRIPTOR.services_by_name["TokenSinkService"].full_name,),
            self._register_token_sink, self.internal_auth, internal_policy.TOKEN_SINK,
        )

    def extra_ports(self) -> list[ExtraPort]:
        return [self.token_sink]

    def bind_health(self, health) -> None:
        """Called by GrpcApp: the admission watchdog turns this health NOT_SERVING on a stall."""
        self._health = health

    async def _set_serving(self, serving: bool) -> None:
        if self._health is None:
            return
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *self.service_names):
            await self._health.set(name, status)

    def register(self, server) -> None:
        generation_pb2_grpc.add_GenerationServiceServicer_to_server(GenerationServicer(self.generation), server)

    def _register_token_sink(self, server) -> None:
        token_sink_pb2_grpc.add_TokenSinkServiceServicer_to_server(
            TokenSinkServicer(self.inflight, SinkAuthorizer(self.redis)), server)

    @property
    def internal_port(self) -> int:
        """The token sink's bound port."""
        return self.token_sink.bound

    @property
    def internal_address(self) -> str:
        """Where workers and schedulers reach this gateway's token sink (each request's reply_to)."""
        return f"{self.settings.advertise_host or self.settings.host}:{self.token_sink.bound}"

    async def start(self, bound_port: int) -> None:
        self.queue.reply_to = self.internal_address
        self.limiter.start(self.supervisor)
        await self.limiter.warm_up()
        self.watchdog.start()
        self.http_port = await self.http.start()
        # The HTTP API gone while gRPC says SERVING would be a quiet death: fatal.
        self.supervisor.spawn("http", self.http.serve_until_stopped, "fatal")
        # Workers cancel the requests of a gateway whose registration is gone (after a grace).
        await self._register()
        self.supervisor.spawn("registration", self._register_forever, "restart")

    async def _register(self) -> None:
        try:
            await register_gateway(self.redis, self.internal_address, int(self.settings.registration_ttl_s * 1000))
        except RedisError as e:  # the next beat retries; workers wait out their grace first
            log.warning("gateway registration failed", error=type(e).__name__)

    async def _register_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.registration_ttl_s / 3)
            await self._register()

    async def drain(self) -> None:
        self.generation.draining = True
        while len(self.inflight):
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        await self.watchdog.stop()
        await self.http.stop()
        await self.supervisor.stop()
        if not len(self.inflight):  # drained: nothing of ours is left for a worker to keep
            with contextlib.suppress(RedisError):
                await withdraw_gateway(self.redis, self.internal_address)
        await self.limiter.close()
        await self.redis.aclose()
