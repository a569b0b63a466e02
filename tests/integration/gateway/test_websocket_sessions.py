"""One WebSocket carries requests back to back: the next one, sent the moment `done` arrives,
is served, never refused as `busy` for the finished one (found with the `websockets` client)."""

from __future__ import annotations

import json

import pytest
import websockets

from llmserve.gateway.routing.catalog import ModelCatalog
from tests.support.scripted_engine import ScriptedEngine
from tests.support.stack import API_KEY, MODEL, running_stack

HEADERS = {"authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def catalog():
    return ModelCatalog.load([MODEL])


async def _until_final(ws) -> list[dict]:
    messages = []
    while not messages or messages[-1]["type"] not in ("done", "error", "cancelled"):
        messages.append(json.loads(await ws.recv()))
    return messages


async def test_requests_sent_right_after_done_are_served_and_a_late_cancel_hits_nothing(redis_url, catalog):
    async with running_stack(redis_url, [ScriptedEngine()], catalog) as stack:
        url = f"ws://127.0.0.1:{stack.gateway.service.http_port}/v1/ws"
        async with websockets.connect(url, additional_headers=HEADERS) as ws:
            for i in range(8):
                await ws.send(json.dumps({"model": MODEL, "prompt": f"hi {i}", "max_tokens": 3,
                                          "request_id": f"b2b-{i}"}))
                messages = await _until_final(ws)
                assert messages[-1]["type"] == "done", messages
                assert {m["request_id"] for m in messages} == {f"b2b-{i}"}
            await ws.send(json.dumps({"type": "cancel"}))  # the last request is over
            late = json.loads(await ws.recv())
            assert late["type"] == "error" and late["error"]["code"] == "not_running" and "request_id" not in late

            # A busy socket still says so, and a cancel still stops the running request.
            await ws.send(json.dumps({"model": MODEL, "prompt": "long", "max_tokens": 500, "request_id": "long"}))
            assert json.loads(await ws.recv())["type"] == "token"
            await ws.send(json.dumps({"model": MODEL, "prompt": "other", "max_tokens": 3}))
            seen = [json.loads(await ws.recv())]
            while not (seen[-1]["type"] == "error" and seen[-1]["error"]["code"] == "busy"):
                seen.append(json.loads(await ws.recv()))
            assert seen[-1]["request_id"] == "long"
            await ws.send(json.dumps({"type": "cancel"}))
            assert (await _until_final(ws))[-1] == {"type": "cancelled", "request_id": "long"}

            # A message nested too deeply for the parser is a 400 on a socket that stays open.
            await ws.send("[" * 100_000 + "]" * 100_000)
            error = json.loads(await ws.recv())
            assert error["status"] == 400 and "nested too deeply" in error["error"]["message"]
            await ws.send(json.dumps({"model": MODEL, "prompt": "after", "max_tokens": 2}))
            assert (await _until_final(ws))[-1]["type"] == "done"
