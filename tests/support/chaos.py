"""kill -9 workers in the middle of streams; every stream must still complete, exactly.

Used by the e2e test (5 kills; 20 in `make test-exhaustive`) and by `make chaos` (200 kills, results in bench/results/).
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import threading
import time
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2

from llmserve.cli.suite import LocalSuite, health_status
from llmserve.client import Client
from llmserve.common.model_store import DEFAULT_MODEL
from llmserve.common.stats import quantile
from llmserve.worker.v1 import worker_pb2, worker_pb2_grpc

PROMPTS = [
    "What is the capital of France?",
    "Name three primary colors.",
    "Write one sentence about the sea.",
    "What is 12 times 12?",
]
MAX_TOKENS = 32


@dataclass
class StreamResult:
    prompt: str
    text: str = ""
    indexes: list[int] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    finish: str | None = None
    error: str | None = None


@dataclass
class ChaosReport:
    kills: int = 0
    streams: int = 0
    failures: list[str] = field(default_factory=list)
    recovery_s: list[float] = field(default_factory=list)

    def summary(self) -> dict:
        rec = self.recovery_s
        return {"kills": self.kills, "streams": self.streams, "failures": len(self.failures),
                "recovery_p50_s": quantile(rec, 0.5, method="floor"),
                "recovery_p99_s": quantile(rec, 0.99, method="floor"),
                "recovery_mean_s": statistics.fmean(rec) if rec else None}


def run_stream(address: str, api_key: str, prompt: str, out: StreamResult) -> None:
    try:
        with Client(address, api_key=api_key, timeout=120) as client:
            for piece in client.stream(DEFAULT_MODEL, messages=[{"role": "user", "content": prompt}],
                                       temperature=0.0, max_tokens=MAX_TOKENS):
                now = time.monotonic()
                for i in range(piece.index, piece.index + len(piece.token_ids)):
                    out.indexes.append(i)
                    out.arrivals.append(now)
                out.text += piece.text
                out.finish = piece.finish_reason or out.finish
    except grpc.RpcError as e:
        out.error = f"{e.code().name}: {e.details()}"


def busiest_worker(suite: LocalSuite):
    best, best_running = None, 0
    for service in suite.services:
        if not service.name.startswith("worker") or not service.alive():
            continue
        try:
            with suite.operator_auth().channel(f"127.0.0.1:{service.port}") as channel:
                status = worker_pb2_grpc.WorkerServiceStub(channel).GetStatus(worker_pb2.GetStatusRequest(), timeout=1)
        except grpc.RpcError:
            continue
        if status.running > best_running:
            best, best_running = service, status.running
    return best


def serving_workers(suite: LocalSuite) -> int:
    n = 0
    for service in suite.services:
        if service.name.startswith("worker") and service.alive():
            with contextlib.suppress(grpc.RpcError):
                n += health_status(service.port, timeout=0.5) == health_pb2.HealthCheckResponse.SERVING
    return n


def chaos_round(suite: LocalSuite, references: dict[str, str], report: ChaosReport, round_no: int,
                streams_per_round: int = 3, min_serving: int = 2) -> None:
    deadline = time.monotonic() + 120
    while serving_workers(suite) < min_serving and time.monotonic() < deadline:
        time.sleep(0.1)  # a survivor must be there to take the streams over
    address = f"127.0.0.1:{suite.ports.gateway}"
    prompts = [PROMPTS[(round_no + i) % len(PROMPTS)] for i in range(streams_per_round)]
    results = [StreamResult(p) for p in prompts]
    threads = [threading.Thread(target=run_stream, args=(address, suite.api_key, p, r))
               for p, r in zip(prompts, results, strict=True)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any(len(r.indexes) >= 4 for r in results):
        time.sleep(0.01)
    victim = busiest_worker(suite)
    killed_at = time.monotonic()
    if victim is not None:
        os.kill(victim.process.pid, signal.SIGKILL)
        victim.process.wait()
        suite.services.remove(victim)
        report.kills += 1
        index = 0 if victim.name == "worker" else int(victim.name.removeprefix("worker"))
        suite.spawn_worker(index, generation=round_no + 1)  # a replacement, as an orchestrator would
    for t in threads:
        t.join(180)
    for r in results:
        report.streams += 1
        problem = check_stream(r, references[r.prompt])
        if problem:
            report.failures.append(f"round {round_no}: {problem}")
        after = [a for a in r.arrivals if a > killed_at]
        gaps = [b - a for a, b in zip(r.arrivals, r.arrivals[1:], strict=False) if b > killed_at]
        if victim is not None and after and gaps:
            report.recovery_s.append(max(gaps))


def check_stream(r: StreamResult, reference: str) -> str | None:
    if r.error:
        return f"{r.prompt!r} failed: {r.error}"
    if r.indexes != list(range(len(r.indexes))):
        return f"{r.prompt!r}: token indexes missing or repeated: {r.indexes}"
    if r.text != reference:
        return f"{r.prompt!r}: text {r.text!r} != uninterrupted {reference!r}"
    if r.finish is None:
        return f"{r.prompt!r}: no final message"
    return None


def reference_texts(suite: LocalSuite) -> dict[str, str]:
    """The uninterrupted greedy text of every prompt, through the same suite."""
    out = {}
    with Client(f"127.0.0.1:{suite.ports.gateway}", api_key=suite.api_key) as client:
        for prompt in PROMPTS:
            out[prompt] = client.generate(DEFAULT_MODEL, messages=[{"role": "user", "content": prompt}],
                                          temperature=0.0, max_tokens=MAX_TOKENS).text
    return out


CHAOS_ENV = {
    "LLMSERVE_WORKER_HEARTBEAT_INTERVAL_MS": "200",
    "LLMSERVE_WORKER_HEARTBEAT_TTL_MS": "1000",
    "LLMSERVE_SCHEDULER_REGISTRY_REFRESH_MS": "100",
    "LLMSERVE_WORKER_NUM_THREADS": "1",
}
