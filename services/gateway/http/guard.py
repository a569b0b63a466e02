"""Limits for the public HTTP port that uvicorn does not apply by itself.

uvicorn closes a kept-alive connection that stays idle after a response, but a connection that
never sends a request, one that sends half its headers, or a body that never ends stay open for
ever, and nothing caps how many sockets one client may hold (slowloris). `GuardedH11Protocol`
adds, per connection:
- a header deadline: the request line and headers must arrive within `header_timeout_s` of the
  connection opening or of the previous response ending;
- a body deadline: a request's body must arrive within `body_timeout_s` of its headers;
- caps on open connections per process and per client address, answered with a 503 naming the
  cap and a Retry-After before anything is read.
Past a deadline the socket is closed quietly (the client sent no request worth an answer);
WebSocket connections leave the guard's timers once upgraded but stay counted.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field

from uvicorn.protocols.http.h11_impl import H11Protocol

from llmserve.common.logging import get_logger

from .protocol import ErrorBody, ErrorInfo

log = get_logger(__name__)


@dataclass
class ConnectionLimits:
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_connections: int = 4096  # 0: no cap
    max_connections_per_client: int = 2048  # 0: no cap


@dataclass
class ConnectionGuard:
    """Open connections of one HTTP listener, by client address."""

    limits: ConnectionLimits
    open: dict[asyncio.BaseTransport, str] = field(default_factory=dict)
    per_client: Counter[str] = field(default_factory=Counter)
    refused: int = 0

    def admit(self, transport: asyncio.BaseTransport, client: str) -> str | None:
        """Count a new connection; the name of the cap it would break, or None."""
        if self._over_cap(client):
            self._forget_closed()  # upgraded WebSockets close without telling this protocol
        cap = self._over_cap(client)
        if cap:
            self.refused += 1
            return cap
        self.open[transport] = client
        self.per_client[client] += 1
        return None

    def release(self, transport: asyncio.BaseTransport) -> None:
        client = self.open.pop(transport, None)
        if client is not None:
            self.per_client[client] -= 1
            if self.per_client[client] <= 0:
                del self.per_client[client]

    def _over_cap(self, client: str) -> str | None:
        if self.limits.max_connections and len(self.open) >= self.limits.max_connections:
            return "http_max_connections"
        if self.limits.max_connections_per_client and self.per_client[client] >= self.limits.max_connections_per_client:
            return "http_max_connections_per_client"
        return None

    def _forget_closed(self) -> None:
        for transport in [t for t in self.open if t.is_closing()]:
            self.release(transport)


def _refusal(cap: str) -> bytes:
    body = ErrorBody(error=ErrorInfo(message=f"too many open connections ({cap}); retry later", type="server_error",
                                     param=None, code="too_many_connections")).model_dump_json()
    return (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
            b"connection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body.encode())


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the guard's deadlines and caps (see the module doc)."""

    guard: ConnectionGuard  # set on the subclass `guarded_protocol` makes

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        self._upgraded = self._refused = False
        cap = self.guard.admit(transport, self.client[0] if self.client else "")
        if cap:
            log.warning("connection refused at the cap", cap=cap, client=self.client and self.client[0])
            self._refused = True
            transport.write(_refusal(cap))
            # Closing with the client's request unread would reset the socket before it reads
            # the answer: discard what it sends for a moment, then close.
            self.loop.call_later(1.0, transport.close)
            return
        self._await_headers()

    def connection_lost(self, exc) -> None:
        self.guard.release(self.transport)
        self._cancel_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        waiting_for_headers = self.cycle is None or self.cycle.response_complete
        previous = self.cycle
        super().data_received(data)
        if self._upgraded or self.transport.is_closing():
            return
        if waiting_for_headers and self.cycle is not previous:  # headers complete: a new request
            self._set_deadline(self.guard.limits.body_timeout_s, self._body_late)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._await_headers()

    def handle_websocket_upgrade(self, event) -> None:
        self._upgraded = True
        self._cancel_deadline()
        super().handle_websocket_upgrade(event)

    def _await_headers(self) -> None:
        self._set_deadline(self.guard.limits.header_timeout_s, self._headers_late)

    def _headers_late(self) -> None:
        if self.cycle is None or self.cycle.response_complete:
            self._close_quietly("headers")

    def _body_late(self) -> None:
        if self.cycle is not None and self.cycle.more_body and not self.cycle.response_complete:
            self._close_quietly("body")

    def _close_quietly(self, what: str) -> None:
        log.debug("closing a connection that was too slow to send its request", part=what,
                  client=self.client and self.client[0])
        if not self.transport.is_closing():
            self.transport.close()

    def _set_deadline(self, seconds: float, callback) -> None:
        self._cancel_deadline()
        if seconds > 0:
            self._deadline = self.loop.call_later(seconds, callback)

    def _cancel_deadline(self) -> None:
        if getattr(self, "_deadline", None) is not None:
            self._deadline.cancel()
            self._deadline = None


def guarded_protocol(guard: ConnectionGuard) -> type[GuardedH11Protocol]:
    """A protocol class bound to one listener's guard (uvicorn instantiates it per connection)."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"guard": guard})
