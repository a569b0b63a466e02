"""`python -m llmserve.cli.healthcheck` against a real gRPC health server."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from llmserve.cli.healthcheck import main
from llmserve.cli.redis_server import free_port


async def test_exit_code_follows_the_serving_status():
    health = HealthServicer()
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        await health.set("", health_pb2.HealthCheckResponse.SERVING)
        assert await asyncio.to_thread(main, [f":{port}"]) == 0
        await health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)  # draining
        assert await asyncio.to_thread(main, [f"127.0.0.1:{port}"]) == 1
        assert await asyncio.to_thread(main, [f":{port}", "--service", "unknown.Service"]) == 1
    finally:
        await server.stop(None)


def test_nothing_listening_is_unhealthy_as_a_process():
    result = subprocess.run(
        [sys.executable, "-m", "llmserve.cli.healthcheck", f":{free_port()}", "--timeout", "0.5"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert result.stdout.strip() in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
