"""The local suite as real processes: Redis, gateway, scheduler, worker(s), monitor.

Used by `llmserve up` (and so `make run`) and by the end-to-end tests, so what the tests
start is exactly what a developer runs.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmserve.common.internal_auth import InternalAuth, mint_token
from llmserve.common.settings import DEFAULT_REDIS_PORT

from .orphans import dying_with_parent
from .redis_server import RedisServer, free_port, port_free


@dataclass
class Ports:
    gateway: int = 50051
    http: int = 8000
    scheduler: int = 50052
    worker: int = 50053
    monitor: int = 50054
    monitor_http: int = 9464
    gateway_internal: int = 50055  # the token sink workers stream to (never the public port)
    # Each process's own /metrics and /health (the gateway's are on `http`); next workers +10.
    scheduler_metrics: int = 9465
    worker_metrics: int = 9466
    monitor_metrics: int = 9467

    @classmethod
    def free(cls) -> Ports:
        return cls(*(free_port() for _ in fields(cls)))


@dataclass
class ServiceProcess:
    name: str
    port: int
    process: subprocess.Popen
    log_path: Path
    metrics_port: int = 0  # where its own /metrics is served (0: none)

    def alive(self) -> bool:
        return self.process.poll() is None


@dataclass
class LocalSuite:
    """Starts and stops the whole suite; `env` entries override settings for every service.

    Every run has its own random internal secret (internal calls are authenticated, as in a
    deployment); `operator_auth()` is the credential for admin calls into it, also written to
    `<log_dir>/../operator.token` for the CLI.
    """

    ports: Ports = field(default_factory=Ports)
    redis_url: str | None = None
    redis_port: int = DEFAULT_REDIS_PORT
    api_key: str = "llmserve-dev-key"
    log_dir: Path = Path(".run/logs")
    env: dict[str, str] = field(default_factory=dict)
    with_monitor: bool = True
    workers: int = 1
    redis: RedisServer | None = None
    services: list[ServiceProcess] = field(default_factory=list)
    internal_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)
    #: Settings for one kind of service only (`gateway`, `scheduler`, `worker`, `monitor`), e.g.
    #: each its own REDIS_URL with its own ACL user.
    service_env: dict[str, dict[str, str]] = field(default_factory=dict)

    def start_redis(self) -> str:
        if self.redis_url:
            return self.redis_url
        self.redis = RedisServer(self.redis_port, data_dir=self.log_dir.parent / "redis").start()
        self.redis_url = self.redis.url
        return self.redis_url

    def base_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("LLMSERVE_INTERNAL_TOKEN", None)  # each service derives its own identity's token
        env.update({
            "LLMSERVE_INTERNAL_SECRET": self.internal_secret,
            "REDIS_URL": self.redis_url or "",
            "LLMSERVE_GATEWAY_PORT": str(self.ports.gateway),
            "LLMSERVE_GATEWAY_HTTP_PORT": str(self.ports.http),
            "LLMSERVE_GATEWAY_INTERNAL_PORT": str(self.ports.gateway_internal),
            "LLMSERVE_GATEWAY_API_KEYS": f"dev={self.api_key}",
            "LLMSERVE_SCHEDULER_PORT": str(self.ports.scheduler),
            "LLMSERVE_WORKER_PORT": str(self.ports.worker),
            "LLMSERVE_WORKER_WORKER_ID": f"worker-{self.ports.worker}",
            "LLMSERVE_MONITOR_PORT": str(self.ports.monitor),
            "LLMSERVE_MONITOR_HTTP_PORT": str(self.ports.monitor_http),
            "LLMSERVE_SCHEDULER_METRICS_PORT": str(self.ports.scheduler_metrics),
            "LLMSERVE_WORKER_METRICS_PORT": str(self.ports.worker_metrics),
            "LLMSERVE_MONITOR_METRICS_PORT": str(self.ports.monitor_metrics),
            "PYTHONUNBUFFERED": "1",
            # Locally every service shares the same cores with the worker's matmuls: give the
            # limiter's Redis call more than the production 15 ms before it counts as an outage.
            "LLMSERVE_GATEWAY_RATELIMIT_TIMEOUT_MS": "250",
        })
        if self.with_monitor:
            env.setdefault("LLMSERVE_OTLP_ENDPOINT", f"127.0.0.1:{self.ports.monitor}")
        env.update(self.env)
        return env

    def operator_auth(self) -> InternalAuth:
        """An operator credential for this run's internal ports (worker admin, monitor, scheduler)."""
        return InternalAuth(token=mint_token(self.internal_secret, "operator", "suite"))

    def write_operator_token(self) -> Path:
        path = self.log_dir.parent / "operator.token"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.chmod(0o600)
        path.write_text(self.operator_auth().token or "")
        return path

    def spawn(self, name: str, module: str, port: int, extra_env: dict[str, str] | None = None,
              metrics_port: int = 0) -> ServiceProcess:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        env = self.base_env() | self.service_env.get(name.rstrip("0123456789"), {}) | (extra_env or {})
        with open(log_path, "ab") as log:
            # Own session: a terminal's Ctrl-C reaches `up`, which stops us in order. Parent-death
            # signal: if `up` itself is killed, we go too.
            process = subprocess.Popen(**dying_with_parent([sys.executable, "-m", module]), env=env,
                                       stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        service = ServiceProcess(name, port, process, log_path, metrics_port)
        self.services.append(service)
        return service

    def spawn_worker(self, index: int, generation: int = 0, extra_env: dict[str, str] | None = None) -> ServiceProcess:
        """Worker `index` listens on the worker port + 10*index (50053, 50063, ...); a restarted
        worker (generation > 0) takes a new id, as a replacement pod would. `extra_env`: settings
        for this worker only."""
        port = self.ports.worker + 10 * index if index else self.ports.worker
        if index and not port_free(port):
            port = free_port()
        worker_id = f"worker-{port}" + (f"-{generation}" if generation else "")
        name = "worker" if index == 0 else f"worker{index}"
        metrics = self.ports.worker_metrics + 10 * index if index else self.ports.worker_metrics
        if index and not port_free(metrics):
            metrics = free_port()
        return self.spawn(name, "llmserve.worker", port,
                          {"LLMSERVE_WORKER_PORT": str(port), "LLMSERVE_WORKER_WORKER_ID": worker_id,
                           "LLMSERVE_WORKER_METRICS_PORT": str(metrics), **(extra_env or {})},
                          metrics_port=metrics)

    def start(self, timeout: float = 180.0) -> None:
        self.start_redis()
        self.write_operator_token()
        if self.with_monitor:
            self.spawn("monitor", "llmserve.monitor", self.ports.monitor, metrics_port=self.ports.monitor_metrics)
        for index in range(self.workers):
            self.spawn_worker(index)
        self.spawn("scheduler", "llmserve.scheduler", self.ports.scheduler, metrics_port=self.ports.scheduler_metrics)
        self.spawn("gateway", "llmserve.gateway", self.ports.gateway, metrics_port=self.ports.http)
        self.wait_serving(timeout)

    def wait_serving(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for service in self.services:
            wait_serving(service, deadline)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM every service (they drain), then Redis; kill whatever outlives timeout."""
        for service in reversed(self.services):
            if service.alive():
                service.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for service in self.services:
            try:
                service.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(service.process.pid, signal.SIGKILL)
                service.process.wait()
        self.services.clear()
        if self.redis:
            self.redis.stop()
            self.redis = None


def health_status(port: int, timeout: float = 1.0) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout).status


def wait_serving(service: ServiceProcess, deadline: float) -> None:
    while time.monotonic() < deadline:
        if not service.alive():
            tail = service.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{service.name} exited with {service.process.returncode}:\n{tail}")
        try:
            if health_status(service.port) == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{service.name} not SERVING on :{service.port} in time; see {service.log_path}")
