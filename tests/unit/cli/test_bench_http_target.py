"""The HTTP load target against a server that drops reused keep-alive connections."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from llmserve.cli.bench_targets import HttpTarget

_SSE = (b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n'
        b'data: {"choices":[{"delta":{"content":" there"}}]}\n\ndata: [DONE]\n\n')


async def _serve(drop_first: int):
    """An HTTP/1.1 server that reads the request of its first `drop_first` connections and
    closes them unanswered (cpp-httplib's keep-alive limit looks like this to a client)."""
    seen = {"connections": 0}

    async def handle(reader, writer):
        seen["connections"] += 1
        await reader.readuntil(b"\r\n\r\n")
        if seen["connections"] <= drop_first:
            writer.close()
            return
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                     b"content-length: %d\r\n\r\n" % len(_SSE) + _SSE)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, seen


async def test_a_dropped_connection_is_sent_again_once():
    server, seen = await _serve(drop_first=1)
    port = server.sockets[0].getsockname()[1]
    target = HttpTarget(f"http://127.0.0.1:{port}", None, "m")
    try:
        got = [n async for n in target.stream({"prompt": "x"}, 4)]
    finally:
        await target.close()
        server.close()
    assert got == [1, 1] and seen["connections"] == 2


async def test_a_server_that_keeps_dropping_is_an_error():
    server, _ = await _serve(drop_first=10)
    port = server.sockets[0].getsockname()[1]
    target = HttpTarget(f"http://127.0.0.1:{port}", None, "m")
    try:
        with pytest.raises(httpx.RemoteProtocolError):
            _ = [n async for n in target.stream({"prompt": "x"}, 4)]
    finally:
        await target.close()
        server.close()
