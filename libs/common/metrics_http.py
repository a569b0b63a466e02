"""A process's own `/metrics` (Prometheus text) and `/health`, on a small HTTP port.

For services without an HTTP API of their own (scheduler, worker, monitor's process metrics):
`metrics_port` in their settings turns it on. The gateway serves the same two paths on its
HTTP API port instead. `/health` answers from `HealthState`, which the gRPC bootstrap moves
together with grpc.health.v1, so an HTTP probe and a gRPC probe never disagree.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from .logging import get_logger
from .prom_endpoint import CONTENT_TYPE, render

log = get_logger(__name__)
_READ_TIMEOUT_S = 5.0


@dataclass
class HealthState:
    """SERVING or not, as grpc.health.v1 reports it for the whole server (service "")."""

    serving: bool = False

    def body(self) -> tuple[int, bytes]:
        """HTTP status and body of `/health`: 200 SERVING, 503 NOT_SERVING."""
        return (200, b"SERVING\n") if self.serving else (503, b"NOT_SERVING\n")


class MetricsServer:
    """HTTP/1.1 GET `/metrics` and `/health` on host:port (0 picks a free port)."""

    def __init__(self, host: str, port: int, health: HealthState):
        self.host, self.port, self.health = host, port, health
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("metrics endpoint", address=f"{self.host}:{self.port}")
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _READ_TIMEOUT_S)
            method, path = _request_line(head)
            status, ctype, body = self._respond(method, path)
            writer.write(b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                         % (status, _REASONS[status], ctype.encode(), len(body)) + body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass  # a scraper that went away or sent nonsense: nothing to answer
        finally:
            writer.close()

    def _respond(self, method: str, path: str) -> tuple[int, str, bytes]:
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"method not allowed\n"
        if path == "/metrics":
            return 200, CONTENT_TYPE, render()
        if path == "/health":
            status, body = self.health.body()
            return status, "text/plain", body
        return 404, "text/plain", b"not found\n"


_REASONS = {200: b"OK", 404: b"Not Found", 405: b"Method Not Allowed", 503: b"Service Unavailable"}


def _request_line(head: bytes) -> tuple[str, str]:
    parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
    if len(parts) < 2:
        return "", ""
    return parts[0], parts[1].split("?", 1)[0]
