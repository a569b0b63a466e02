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
from .openai_format import error_body, parse_request, usage


async def websocket_endpoint(ws: WebSocket, service: GenerationService) -> None:
    """Serve one WebSocket connection until the client closes it."""
    await ws.accept()
    try:
        authorization = single_authorization(ws.headers.getlist("authorization"))
    except LLMServeError as e:
        await ws.send_json(_error(e))
        await ws.close()
        return
    with contextlib.suppress(WebSocketDisconnect):
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            try:
                body = _decode(message, service.settings.max_request_bytes)
                parsed = parse_request(body, chat="messages" in body)
                job = await service.admit(authorization, parsed.params)
            except LLMServeError as e:
                await ws.send_json(_error(e))
                continue
            if not await _run(ws, service.stream(job, None), job.request_id):
                return


def _decode(message: dict, limit: int) -> dict:
    raw = message.get("text") if message.get("text") is not None else message.get("bytes") or b""
    if len(raw) > limit:
        raise InvalidArgument(f"the message is over max_request_bytes ({limit})")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidArgument("each message must be a JSON object") from e
    if not isinstance(body, dict):
        raise InvalidArgument("each message must be a JSON object")
    return body


def _error(e: LLMServeError) -> dict:
    status, body = error_body(e)
    out = {"type": "error", "status": status, **body}
    if e.retry_after_s is not None:
        out[RETRY_AFTER_KEY] = int(e.retry_after_s * 1000)
    return out


async def _run(ws: WebSocket, events, request_id: str) -> bool:
    """Stream one request while watching the socket; False when the client went away."""
    producer = asyncio.create_task(_produce(ws, events, request_id))
    watcher = asyncio.create_task(_watch(ws, request_id))
    try:
        await asyncio.wait({producer, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (producer, watcher):
            task.cancel()
        await asyncio.gather(producer, watcher, return_exceptions=True)
        await events.aclose()  # closing the iterator cancels an unfinished request
    if watcher.done() and not watcher.cancelled() and watcher.exception() is None:
        gone = watcher.result()
        if not gone:
            await ws.send_json({"type": "cancelled", "request_id": request_id})
        return not gone
    return True


async def _produce(ws: WebSocket, events, request_id: str) -> None:
    try:
        async for event in events:
            if isinstance(event, TokenEvent):
                await ws.send_json(
                    {
                        "type": "token",
                        "request_id": request_id,
                        "index": event.index,
                        "text": event.text,
                        "token_ids": event.token_ids,
                    }
                )
            else:
                await ws.send_json(
                    {
                        "type": "done",
                        "request_id": request_id,
                        "finish_reason": event.reason,
                        "usage": usage(event),
                    }
                )
    except LLMServeError as e:
        await ws.send_json({**_error(e), "request_id": request_id})


async def _watch(ws: WebSocket, request_id: str) -> bool:
    """Ends on close (True) or a cancel message (False); other messages wait their turn."""
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            return True
        with contextlib.suppress(ValueError, UnicodeDecodeError, TypeError, AttributeError):
            if json.loads(message.get("text") or message.get("bytes") or "").get("type") == "cancel":
                return False
        await ws.send_json(
            {
                "type": "error",
                "status": 409,
                "request_id": request_id,
                "error": {
                    "message": "one request at a time per connection; send "
                    '{"type": "cancel"} to stop the running one',
                    "type": "invalid_request_error",
                    "code": "busy",
                    "param": None,
                },
            }
        )
