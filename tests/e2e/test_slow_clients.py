"""Slow and idle clients cannot hold the gateway's sockets: a real gateway process.

500 idle sockets, 50 requests whose headers never end and 10 whose body never ends are
closed by the server within the configured timeouts, while normal requests are answered; at
the per-client cap a new connection gets a 503 naming the cap with a Retry-After; sockets
that never speak HTTP/2 to the gRPC port are closed within its handshake timeout.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from llmserve.cli.redis_server import RedisServer
from llmserve.cli.suite import LocalSuite, Ports

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
KEY = "slow-clients-key"
HEADER_S, BODY_S, HANDSHAKE_S, PER_CLIENT = 2.0, 2.0, 2.0, 700
ENV = {
    "LLMSERVE_GATEWAY_API_KEYS": f"acme={KEY}",
    "LLMSERVE_GATEWAY_HTTP_HEADER_TIMEOUT_S": str(HEADER_S),
    "LLMSERVE_GATEWAY_HTTP_BODY_TIMEOUT_S": str(BODY_S),
    "LLMSERVE_GATEWAY_HTTP_MAX_CONNECTIONS_PER_CLIENT": str(PER_CLIENT),
    "LLMSERVE_GATEWAY_GRPC_HANDSHAKE_TIMEOUT_S": str(HANDSHAKE_S),
}


@pytest.fixture
def gateway(tmp_path):
    with RedisServer() as redis:
        ports = Ports.free()
        suite = LocalSuite(ports=ports, redis_url=redis.url, log_dir=tmp_path, with_monitor=False, env=ENV)
        try:
            suite.spawn("gateway", "llmserve.gateway", ports.gateway)
            suite.wait_serving(timeout=120)
            yield suite
        finally:
            suite.stop()


async def _open(port: int, first_bytes: bytes = b"") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if first_bytes:
        writer.write(first_bytes)
        await writer.drain()
    return reader, writer


async def _closed_after(reader: asyncio.StreamReader, opened: float, limit: float) -> float | None:
    """Seconds until the server closed the socket (EOF or reset); None if still open at `limit`."""
    try:
        async with asyncio.timeout(limit):
            while await reader.read(4096):
                pass
    except TimeoutError:
        return None
    except ConnectionError:
        pass
    return time.monotonic() - opened


async def _normal_request(client: httpx.AsyncClient) -> float:
    started = time.monotonic()
    reply = await client.get("/v1/models", headers={"authorization": f"Bearer {KEY}"})
    assert reply.status_code == 200, reply.text
    return time.monotonic() - started


@pytest.mark.timeout(180)
async def test_idle_and_half_sent_connections_are_closed_and_capped(gateway):
    port = gateway.ports.http
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        before = [await _normal_request(client) for _ in range(5)]

    opened = time.monotonic()
    idle = [await _open(port) for _ in range(500)]
    half_headers = [await _open(port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Ty")
                    for _ in range(50)]
    half_body = [await _open(port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                                   b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"mod")
                 for _ in range(10)]
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        during = [await _normal_request(client) for _ in range(5)]

    slack = 3.0
    idle_closed = await asyncio.gather(*(_closed_after(r, opened, HEADER_S + slack) for r, _ in idle + half_headers))
    body_closed = await asyncio.gather(*(_closed_after(r, opened, BODY_S + slack) for r, _ in half_body))
    for _, w in idle + half_headers + half_body:
        w.close()
    assert sum(t is None for t in idle_closed) == 0, "idle or half-sent sockets still open past the timeout"
    assert sum(t is None for t in body_closed) == 0, "a never-ending body still open past the timeout"
    assert min(idle_closed) >= HEADER_S * 0.9  # closed by the deadline, not at once
    print(f"normal /v1/models p50 before {sorted(before)[2] * 1e3:.1f} ms, during {sorted(during)[2] * 1e3:.1f} ms;"
          f" idle closed after {min(idle_closed):.2f}-{max(idle_closed):.2f} s")

    # The per-client cap: PER_CLIENT sockets are held, the next one is told why it is refused.
    held = [await _open(port) for _ in range(PER_CLIENT)]
    reader, writer = await _open(port, b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 5)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503"), head
    assert b"retry-after: 1" in head.lower()
    assert "http_max_connections_per_client" in json.loads(body)["error"]["message"]
    writer.close()
    for _, w in held:
        w.close()
    await asyncio.sleep(0.5)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        await _normal_request(client)  # released slots come back


@pytest.mark.timeout(120)
async def test_sockets_that_never_speak_http2_to_the_grpc_port_are_closed(gateway):
    port = gateway.services[0].port
    opened = time.monotonic()
    sockets = [await _open(port) for _ in range(200)]
    closed = await asyncio.gather(*(_closed_after(r, opened, HANDSHAKE_S + 5) for r, _ in sockets))
    for _, w in sockets:
        w.close()
    assert sum(t is None for t in closed) == 0, "gRPC sockets without a handshake still open"
