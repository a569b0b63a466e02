"""The WebSocket stream (`/v1/ws`): one request at a time per connection, tokens as they come.

The client authenticates in the handshake (`Authorization: Bearer ...`) and sends request
objects (an OpenAI chat body with `messages`, or a completion body with `prompt`). The
gateway answers `{"type": "token", ...}` messages, then `{"type": "done", ...}` with the
finish reason and usage, or `{"type": "error", ...}` with the HTTP status and retry delay.
`{"type": "cancel"}` or closing the socket cancels the running request everywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

from starlette.websockets import WebSocket, WebSocketDisconnect

from llmserve.common.errors import RETRY_AFTER_KEY, InvalidArgument, LLMServeError

from ..admission.auth import single_authorization
from ..generation import GenerationService
from ..streams.inflight import TokenEvent
from .openai_format import error_body, json_object, parse_request, usage
from .protocol import ErrorInfo


async def websocket_endpoint(ws: WebSocket, service: GenerationService) -> None:
    """Serve one WebSocket connection until the client closes it."""
    await ws.accept()
    try:
        authorization = single_authorization(ws.headers.getlist("authorization"))
    except LLMServeError as e:
        await ws.send_json(_error(e))
        await ws.close()
        return
    conn = _Connection(ws)
    reader = asyncio.create_task(conn.read())
    try:
        while (message := await conn.inbox.get()) is not None:
            try:
                body = _decode(message, service.settings.max_request_bytes)
                if body.get("type") == "cancel":
                    await ws.send_json(_idle_cancel())
                    continue
                parsed = parse_request(body, chat="messages" in body)
                if parsed.best_of != 1 or (parsed.prompts is not None and len(parsed.prompts) != 1):
                    param = "n" if parsed.n != 1 else "best_of" if parsed.best_of != 1 else "prompt"
                    raise InvalidArgument("one choice per WebSocket request (n 1, best_of 1, one prompt)", param=param)
                job = await service.admit(authorization, parsed.params)
            except LLMServeError as e:
                await conn.send(_error(e))
                continue
            if not await conn.run(service.stream(job, None), job.request_id):
                return
    except WebSocketDisconnect:
        return
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)


class _Connection:
    """One socket: a single reader, and at most one running request.

    Only `read` receives from the socket. While a request runs, a cancel message cancels it
    and any other message is answered `busy`; otherwise messages queue for the main loop. The
    running request is over (`running` cleared) before its `done` goes out, so a message the
    client sends after reading `done` is always a new request, never a busy or a cancel of the
    finished one.
    """

    def __init__(self, ws: WebSocket):
        self.ws = ws
        self.inbox: asyncio.Queue[dict | None] = asyncio.Queue()
        self.running: str | None = None
        self.cancelled = asyncio.Event()
        self.gone = asyncio.Event()
        self._send_lock = asyncio.Lock()

    async def send(self, payload: dict) -> None:
        async with self._send_lock:
            await self.ws.send_json(payload)

    async def read(self) -> None:
        try:
            while True:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                if self.running is None:
                    self.inbox.put_nowait(message)
                elif _is_cancel(message):
                    self.cancelled.set()
                else:
                    await self.send(_busy(self.running))
        except (WebSocketDisconnect, RuntimeError):
            return
        finally:
            self.gone.set()
            self.inbox.put_nowait(None)

    async def run(self, events, request_id: str) -> bool:
        """Stream one request; False when the client went away."""
        self.running = request_id
        self.cancelled.clear()
        producer = asyncio.create_task(self._produce(events, request_id))
        stop = {asyncio.create_task(self.cancelled.wait()), asyncio.create_task(self.gone.wait())}
        try:
            await asyncio.wait({producer, *stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.running = None
            for task in (producer, *stop):
                task.cancel()
            await asyncio.gather(producer, *stop, return_exceptions=True)
            await events.aclose()  # closing the iterator cancels an unfinished request
        if self.gone.is_set():
            return False
        if not producer.done() or producer.cancelled() or not producer.result():
            await self.send({"type": "cancelled", "request_id": request_id})
        return True

    async def _produce(self, events, request_id: str) -> bool:
        """Send the request's messages; True once its last one (done or error) went out."""
        try:
            async for event in events:
                if isinstance(event, TokenEvent):
                    await self.send({"type": "token", "request_id": request_id, "index": event.index,
                                     "text": event.text, "token_ids": event.token_ids})
                else:
                    self.running = None  # over before the client can read `done`
                    await self.send({"type": "done", "request_id": request_id, "finish_reason": event.reason,
                                     "usage": usage(event).model_dump()})
                    return True
        except LLMServeError as e:
            self.running = None
            await self.send({**_error(e), "request_id": request_id})
            return True
        return True


def _decode(message: dict, limit: int) -> dict:
    raw = message.get("text") if message.get("text") is not None else message.get("bytes") or b""
    if len(raw) > limit:
        raise InvalidArgument(f"the message is over max_request_bytes ({limit})")
    body = json_object(raw, "each message")
    return body


def _is_cancel(message: dict) -> bool:
    with contextlib.suppress(ValueError, UnicodeDecodeError, TypeError, AttributeError, RecursionError):
        return json.loads(message.get("text") or message.get("bytes") or "").get("type") == "cancel"
    return False


def _error(e: LLMServeError) -> dict:
    status, body = error_body(e)
    out = {"type": "error", "status": status, **body}
    if e.retry_after_s is not None:
        out[RETRY_AFTER_KEY] = int(e.retry_after_s * 1000)
    return out


def _busy(request_id: str) -> dict:
    info = ErrorInfo(message='one request at a time per connection; send {"type": "cancel"} to stop the running one',
                     type="invalid_request_error", code="busy", param=None)
    return {"type": "error", "status": 409, "request_id": request_id, "error": info.model_dump()}


def _idle_cancel() -> dict:
    info = ErrorInfo(message="no request is running on this connection", type="invalid_request_error",
                     code="not_running", param=None)
    return {"type": "error", "status": 409, "error": info.model_dump()}
