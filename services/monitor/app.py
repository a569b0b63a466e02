"""Wires the monitor: settings -> store, alerts, channels -> gRPC (API + OTLP) and HTTP.

Serving never depends on the monitor: services export to it in the background and drop data
when it is away. The monitor reads Redis (the worker registry, the model registry's splits) and
writes to it only to take a regressed version out of a traffic split (rollout.py).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable

import redis.asyncio as aioredis
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

from llmserve.common import internal_policy, redis_client
from llmserve.common.internal_auth import InternalAuth
from llmserve.common.logging import get_logger
from llmserve.common.models.registry import ModelRegistry
from llmserve.common.redis_acl import check_credentials
from llmserve.common.server import Service
from llmserve.common.supervise import Supervisor
from llmserve.monitor.v1 import monitor_pb2, monitor_pb2_grpc

from .alerts import AlertEngine, Notification, Silence
from .channels import Notifier
from .http_server import DashboardHttpServer
from .otlp import SERVICE_NAMES as OTLP_SERVICE_NAMES
from .otlp import MetricsIngest, OtlpMetricsServicer, OtlpTraceServicer
from .prometheus import StoreCollector, make_registry
from .registry import RegistryProbe
from .rollout import RolloutGuard
from .rules import RuleSet, load_rules
from .servicer import MonitorServicer
from .settings import MonitorSettings
from .store import MetricStore
from .summary import History, Summary, summarize
from .traces import SpanStore

log = get_logger(__name__)


class MonitorCore:
    """The monitor's state and periodic work, independent of transports."""

    def __init__(self, settings: MonitorSettings, rules: RuleSet, clock: Callable[[], float] = time.time):
        self.settings = settings
        self.rules = rules
        self.clock = clock
        self.store = MetricStore(settings.retention_s, settings.max_series, clock)
        self.ingest = MetricsIngest(self.store)
        self.spans = SpanStore(settings.max_traces)
        self.history = History(settings.history_points)
        self.notifier: Notifier | None = None  # needs a running loop: made in start()
        self.alerts = AlertEngine(
            rules.rules,
            self.store,
            self._notify,
            settings.window_s,
            settings.stale_after_s,
            settings.resolved_retention_s,
        )
        self.latest: Summary | None = None
        #: Where a failed evaluation round is logged and counted (the service's supervisor).
        self.report_failure: Callable[[str, BaseException], None] = lambda task, e: log.error(
            "background task failed", task=task, exc_info=e)
        self.rollouts: RolloutGuard | None = None  # needs Redis: made in start()
        self.registry = make_registry(
            StoreCollector(self.store, self.alerts, lambda: self.latest, settings.stale_after_s)
        )

    def _notify(self, n: Notification) -> None:
        if self.notifier is not None:
            self.notifier(n)

    def summary(self, window_s: float | None = None, model: str = "") -> Summary:
        return summarize(
            self.store,
            self.clock(),
            window_s or self.settings.window_s,
            self.settings.stale_after_s,
            self.settings.scaling_targets,
            self.alerts.firing_count(),
            model,
        )

    def silence(self, matchers: dict[str, str], duration_s: float, comment: str = "") -> Silence:
        return self.alerts.add_silence(matchers, self.clock() + duration_s, comment)

    def tick(self) -> None:
        """One evaluation round: prune, rules, summary, history."""
        self.store.prune()
        self.alerts.evaluate(self.clock())
        self.latest = self.summary()
        self.history.add(self.latest)

    async def evaluate_forever(self) -> None:
        while True:
            if self.rollouts is not None:  # first, so a rollback's alert fires in the same round
                try:
                    await self.rollouts.evaluate(self.clock())
                except Exception as e:  # Redis away, or a bug: alerting goes on
                    self.report_failure("rollouts", e)
            try:
                self.tick()
            except Exception as e:  # keep evaluating: a bug in one round must not end alerting
                self.report_failure("evaluation", e)
            await asyncio.sleep(self.settings.evaluation_interval_s)


class MonitorService(Service):
    """The monitor as a `Service` for the common gRPC bootstrap, plus its HTTP server."""

    service_names = (monitor_pb2.DESCRIPTOR.services_by_name["MonitorService"].full_name, *OTLP_SERVICE_NAMES)
    internal_policy = internal_policy.MONITOR

    def __init__(self, settings: MonitorSettings, rules: RuleSet | None = None):
        self.settings = settings
        self.internal_auth = InternalAuth.from_settings(settings, "monitor", "monitor")
        self.core = MonitorCore(settings, rules or load_rules(settings.rules_path))
        self.http = DashboardHttpServer(self.core)
        self.redis: aioredis.Redis | None = None
        self.supervisor = Supervisor("monitor")
        self.core.report_failure = self.supervisor.count

    @property
    def http_port(self) -> int:
        return self.http.port

    def register(self, server) -> None:
        monitor_pb2_grpc.add_MonitorServiceServicer_to_server(MonitorServicer(self.core), server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(
            OtlpMetricsServicer(self.core.ingest), server
        )
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(OtlpTraceServicer(self.core.spans), server)

    async def start(self, bound_port: int) -> None:
        self.core.notifier = Notifier(self.core.rules.channels)
        port = await self.http.start(self.settings.http_host, self.settings.http_port)
        log.info(
            "http serving", address=f"{self.settings.http_host}:{port}", rules=len(self.core.rules.rules)
        )
        self.supervisor.spawn("evaluation", self.core.evaluate_forever)
        if self.settings.registry_poll_s > 0:
            self.redis = redis_client.connect(self.settings.redis_url, socket_timeout=2, connect_timeout=1)
            await check_credentials(self.redis, self.settings.redis_url)
            probe = RegistryProbe(self.redis, self.core.store, tuple(self.settings.models))
            self.supervisor.spawn("registry", functools.partial(self._poll_registry, probe))
            if self.core.rules.rollouts:
                self.core.rollouts = RolloutGuard(
                    self.core.rules.rollouts, self.core.store, ModelRegistry(self.redis)
                )

    async def _poll_registry(self, probe: RegistryProbe) -> None:
        while True:
            await probe.poll()
            await asyncio.sleep(self.settings.registry_poll_s)

    async def drain(self) -> None:
        """Nothing in flight to hand back; stop the periodic work."""
        await self.supervisor.stop()

    async def close(self) -> None:
        await self.drain()
        await self.http.stop()
        if self.core.notifier is not None:
            await self.core.notifier.aclose()
        if self.redis is not None:
            await self.redis.aclose()
