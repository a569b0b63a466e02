"""Real local receivers for alert channels: an HTTP webhook server and an SMTP server."""

from __future__ import annotations

import asyncio
import contextlib
import email

from aiohttp import web
from aiosmtpd.controller import Controller

from llmserve.cli.redis_server import free_port


class WebhookReceiver:
    """aiohttp server on 127.0.0.1:0 that keeps every JSON body POSTed to it."""

    def __init__(self):
        self.bodies: list[dict] = []
        self.arrived = asyncio.Event()
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def _hook(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.json())
        self.arrived.set()
        return web.json_response({"ok": True})

    async def __aenter__(self) -> WebhookReceiver:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc) -> None:
        await self._runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def wait_for(self, predicate, timeout: float = 10.0):
        """The first body matching predicate, waiting for new ones as they arrive."""
        async with asyncio.timeout(timeout):
            while True:
                for body in self.bodies:
                    if predicate(body):
                        return body
                self.arrived.clear()
                await self.arrived.wait()


class _Inbox:
    def __init__(self):
        self.messages: list[email.message.Message] = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(email.message_from_bytes(envelope.content))
        return "250 OK"


@contextlib.contextmanager
def smtp_server():
    """aiosmtpd on a free local port (its own thread); yields (port, inbox)."""
    inbox = _Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield controller.port, inbox
    finally:
        controller.stop()


async def wait_for_mail(inbox: _Inbox, predicate, timeout: float = 10.0):
    async with asyncio.timeout(timeout):
        while True:
            for msg in inbox.messages:
                if predicate(msg):
                    return msg
            await asyncio.sleep(0.05)
