"""Rate limiter latency: healthy Redis, and how fast the policy decides when Redis is out.

    python bench/gateway_ratelimit_bench.py   ->  bench/results/ratelimit.json

Runs the gateway's RateLimiter (the real Lua script) against a private redis-server, a
closed port (connection refused) and a silent server (accepts, never answers). For the
outages it reports the decision latency before the circuit breaker opens (each call waits
for its deadline) and after (no Redis call at all), for both policies.
"""

from __future__ import annotations

import asyncio
import json
import platform
import socket
import statistics
import time
from pathlib import Path

from llmserve.cli.redis_server import RedisServer
from llmserve.common.errors import LLMServeError
from llmserve.common.stats import quantile
from llmserve.gateway.admission.auth import Limits
from llmserve.gateway.admission.ratelimit import RateLimiter
from llmserve.gateway.settings import GatewaySettings

OUT = Path(__file__).parent / "results" / "ratelimit.json"


def summary(samples_s: list[float]) -> dict:
    ms = sorted(s * 1000 for s in samples_s)
    return {
        "n": len(ms),
        "p50_ms": round(quantile(ms, 0.5, method="floor"), 3),
        "p99_ms": round(quantile(ms, 0.99, method="floor"), 3),
        "max_ms": round(ms[-1], 3),
        "mean_ms": round(statistics.fmean(ms), 3),
    }


async def limiter(url: str, **overrides) -> RateLimiter:
    settings = GatewaySettings(
        redis_url=url,
        port=0,
        requests_per_minute=0,
        tokens_per_minute=0,
        max_concurrent_streams=0,
        admission_max_waiting_per_tenant=0,  # the burst measures Redis batching, not the bound
        **overrides,
    )
    lim = RateLimiter(settings)
    lim.start()
    await lim.warm_up()
    return lim


async def timed(lim: RateLimiter, n: int) -> tuple[list[float], list[str]]:
    times, outcomes = [], []
    for _ in range(n):
        started = time.perf_counter()
        try:
            lease = await lim.acquire("bench", Limits(), 10)
            outcomes.append("admitted-local" if lease.local else "admitted")
        except LLMServeError as e:
            outcomes.append(type(e).__name__)
        times.append(time.perf_counter() - started)
    return times, outcomes


async def healthy(url: str) -> dict:
    lim = await limiter(url)
    times, _ = await timed(lim, 2000)
    started = time.perf_counter()
    outcomes = await asyncio.gather(*(lim.acquire("burst", Limits(), 10) for _ in range(5000)),
                                    return_exceptions=True)
    burst_s = time.perf_counter() - started
    await lim.close()
    # A loaded machine can push a batch past the deadline: those calls get the policy's answer.
    errors = sorted({type(o).__name__ for o in outcomes if isinstance(o, BaseException)})
    return {
        "sequential_acquire": summary(times),
        "burst_5000_concurrent_s": round(burst_s, 3),
        "burst_admissions_per_s": round(5000 / burst_s),
        "burst_not_admitted": sum(isinstance(o, BaseException) for o in outcomes),
        "burst_errors": errors,
    }


async def outage(url: str, policy: str) -> dict:
    lim = await limiter(url, ratelimit_on_redis_down=policy, breaker_failures=3, breaker_reset_s=1.0)
    before, outcomes = await timed(lim, 3)  # each waits for its deadline, then the breaker opens
    after, after_outcomes = await timed(lim, 500)
    await lim.close()
    return {
        "before_breaker_opens": summary(before),
        "breaker_open": summary(after),
        "outcomes": sorted(set(outcomes + after_outcomes)),
    }


async def main() -> dict:
    results: dict = {
        "machine": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "deadline_ms": GatewaySettings(port=0).ratelimit_timeout_ms,
    }
    with RedisServer() as server:
        results["healthy"] = await healthy(server.url)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    refused_url = f"redis://127.0.0.1:{closed.getsockname()[1]}/0"  # bound, not listening: refused
    silent = await asyncio.start_server(lambda r, w: r.read(), "127.0.0.1", 0)
    silent_url = f"redis://127.0.0.1:{silent.sockets[0].getsockname()[1]}/0"
    for name, url in (("refused", refused_url), ("silent", silent_url)):
        for policy in ("closed", "open"):
            results[f"{name}_{policy}"] = await outage(url, policy)
    silent.close()
    closed.close()
    return results


if __name__ == "__main__":
    data = asyncio.run(main())
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(data, indent=2) + "\n")
    print(json.dumps(data, indent=2))
