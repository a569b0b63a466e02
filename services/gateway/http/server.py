"""The HTTP listener: uvicorn serving the Starlette app inside the gateway's event loop.

The socket is bound here (port 0 works; the bound port is known at once) and handed to
uvicorn, whose own signal capture is disabled: the gRPC bootstrap owns SIGTERM and stops
this server during the gateway's shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl

import grpc
import uvicorn

from llmserve.common.logging import get_logger

from ..settings import GatewaySettings
from .guard import ConnectionGuard, ConnectionLimits, guarded_protocol

log = get_logger(__name__)


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):
        yield  # the gateway's bootstrap handles signals and calls stop()


class OpenAIHttpServer:
    """Serves an ASGI app on settings.host:settings.http_port, with TLS when configured."""

    def __init__(self, app, settings: GatewaySettings):
        self.settings = settings
        tls = {}
        if settings.tls_enabled:
            tls = {"ssl_certfile": settings.tls_cert_path, "ssl_keyfile": settings.tls_key_path}
            if settings.tls_client_ca_path:
                tls |= {"ssl_ca_certs": settings.tls_client_ca_path, "ssl_cert_reqs": ssl.CERT_REQUIRED}
        self.guard = ConnectionGuard(ConnectionLimits(
            header_timeout_s=settings.http_header_timeout_s, body_timeout_s=settings.http_body_timeout_s,
            max_connections=settings.http_max_connections,
            max_connections_per_client=settings.http_max_connections_per_client,
        ))
        self.config = uvicorn.Config(
            app,
            http=guarded_protocol(self.guard),
            timeout_keep_alive=settings.http_idle_timeout_s,
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
            server_header=False,
            **tls,
        )
        self.server = _EmbeddedServer(self.config)
        self.port = 0
        self._task: asyncio.Task | None = None

    async def start(self) -> int:
        family = socket.AF_INET6 if ":" in self.settings.host else socket.AF_INET
        sock = socket.create_server((self.settings.host, self.settings.http_port), family=family)
        self.port = sock.getsockname()[1]
        self._task = asyncio.create_task(self.server.serve(sockets=[sock]))
        while not self.server.started:
            if self._task.done():
                self._task.result()  # raises what stopped it
                raise RuntimeError("the HTTP server stopped during start")
            await asyncio.sleep(0.01)
        scheme = "https" if self.settings.tls_enabled else "http"
        log.info("serving HTTP", address=f"{scheme}://{self.settings.host}:{self.port}")
        return self.port

    async def serve_until_stopped(self) -> None:
        """Until the server ends; raises if it ended without `stop` (a supervised task)."""
        if self._task is None:
            return
        task = self._task
        try:
            await asyncio.shield(task)  # raises what ended it
        except asyncio.CancelledError:
            if not task.cancelled():
                raise  # this watcher is being stopped, not the server
        if not self.server.should_exit:
            raise RuntimeError("the HTTP server stopped on its own")

    async def stop(self) -> None:
        if self._task is None:
            return
        if self._task.done():  # it died (a supervised, fatal failure): nothing to stop
            self._task = None
            return
        self.server.should_exit = True
        try:
            await asyncio.wait_for(self._task, 5)
        except TimeoutError:
            log.warning("HTTP server did not stop in time")
        self._task = None


def grpc_server_credentials(settings: GatewaySettings) -> grpc.ServerCredentials | None:
    """TLS (and mutual TLS when a client CA is set) for the public gRPC port; None: plaintext."""
    if not settings.tls_enabled:
        return None
    with open(settings.tls_key_path, "rb") as k, open(settings.tls_cert_path, "rb") as c:
        pair = (k.read(), c.read())
    ca = None
    if settings.tls_client_ca_path:
        with open(settings.tls_client_ca_path, "rb") as f:
            ca = f.read()
    return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=ca is not None)
