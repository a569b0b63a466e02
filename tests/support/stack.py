"""The gateway, scheduler and worker as in-process gRPC servers on port 0 over real Redis."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import grpc

from llmserve.common.internal_auth import InternalAuth, mint_token
from llmserve.common.server import GrpcApp
from llmserve.gateway.app import GatewayService
from llmserve.gateway.settings import GatewaySettings
from llmserve.scheduler.app import SchedulerService
from llmserve.scheduler.settings import SchedulerSettings
from llmserve.worker.app import WorkerService
from llmserve.worker.settings import WorkerSettings

API_KEY = "test-key"
#: Internal authentication is on in the stack by default, as in a deployment.
INTERNAL_SECRET = "stack-internal-secret-0123456789"
MODEL = "SmolLM2-135M-Instruct"


@dataclass
class Stack:
    gateway: GrpcApp
    scheduler: GrpcApp
    workers: list[GrpcApp]

    @property
    def gateway_address(self) -> str:
        return f"127.0.0.1:{self.gateway.port}"


def running_worker(redis_url: str, engine, worker_id: str, model: str = MODEL, **extra) -> GrpcApp:
    """One worker serving `model` (a served model id such as `smol@v2`) with `engine`."""
    extra = {"internal_secret": INTERNAL_SECRET} | extra
    settings = WorkerSettings(redis_url=redis_url, port=0, drain_seconds=2, worker_id=worker_id,
                              heartbeat_interval_ms=100, **extra)  # fmt: skip
    return GrpcApp(WorkerService(settings, engine=engine, model_name=model), settings)


@contextlib.asynccontextmanager
async def running_stack(redis_url: str, engines: list, catalog=None, gateway_overrides=None, models=None,
                        internal_secret: str = INTERNAL_SECRET, internal_tls=None, metrics_port: int | None = None):
    """Start worker(s) with the given engines, a scheduler and a gateway; stop them after.

    `models` names the served model of each worker (default: MODEL for all); internal calls
    are authenticated with `internal_secret` ("" turns that off), or `internal_tls(role, id)`
    gives each service its mutual-TLS settings; `metrics_port` (0: a free one) gives the
    scheduler and workers their own /metrics."""
    def internal(role: str, ident: str) -> dict:
        if internal_tls is not None:
            return internal_tls(role, ident) | {"metrics_port": metrics_port}
        return {"metrics_port": metrics_port, "internal_secret": internal_secret}

    common = {"redis_url": redis_url, "port": 0, "drain_seconds": 2}
    async with contextlib.AsyncExitStack() as stack:
        workers = []
        for i, engine in enumerate(engines):
            model = models[i] if models else MODEL
            workers.append(await stack.enter_async_context(running_worker(redis_url, engine, f"w{i}", model,
                                                                         **internal("worker", f"w{i}"))))
        sched_settings = SchedulerSettings(**common, scheduler_id="s0", registry_refresh_ms=20,
                                           **internal("scheduler", "s0"))
        scheduler = await stack.enter_async_context(GrpcApp(SchedulerService(sched_settings), sched_settings))
        # The limiter's 15 ms Redis deadline is for production; here every service shares a
        # loaded test process, and these tests are not about limiter latency.
        overrides = {"ratelimit_timeout_ms": 1000.0} | (gateway_overrides or {})
        gw_settings = GatewaySettings(**common, api_keys=[f"t1={API_KEY}", "t2=other-key"], **overrides,
                                      **internal("gateway", "g0"))
        gateway = await stack.enter_async_context(
            GrpcApp(GatewayService(gw_settings, catalog=catalog), gw_settings))
        yield Stack(gateway, scheduler, workers)


def model_worker(redis_url: str, worker_id: str, engines: dict | None = None, **overrides) -> GrpcApp:
    """One worker holding several models: `engines` (served id -> engine), or, without them,
    the models its settings name (`models=[...]`) loaded from disk as in production."""
    overrides = {"internal_secret": INTERNAL_SECRET} | overrides
    settings = WorkerSettings(redis_url=redis_url, port=0, drain_seconds=2, worker_id=worker_id,
                              heartbeat_interval_ms=100, **overrides)  # fmt: skip
    return GrpcApp(WorkerService(settings, engines=engines), settings)


def operator_channel(address: str) -> grpc.aio.Channel:
    """A channel to an internal port of these helpers' services, as an operator."""
    return InternalAuth(token=mint_token(INTERNAL_SECRET, "operator", "tests")).aio_channel(address)
