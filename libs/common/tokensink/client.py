"""Client side of the gateway's token sink, used by workers (tokens) and schedulers
(final errors such as DEADLINE_EXCEEDED for requests that never ran).

One long-lived bidirectional stream per gateway address; chunks are queued and sent in
order; the gateway's cancellations are handed to `on_cancel`. A broken stream is
reopened with backoff: a gateway that restarted has lost its clients anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from llmserve.common.internal_auth import InternalAuth
from llmserve.common.logging import get_logger
from llmserve.common.outcome import Outcome
from llmserve.common.tokensink.v1 import token_sink_pb2 as pb
from llmserve.common.tokensink.v1 import token_sink_pb2_grpc

log = get_logger(__name__)


@dataclass
class OutChunk:
    request_id: str
    attempt: int
    index: int
    token_ids: list[int]
    text: str
    outcome: Outcome = Outcome.UNSPECIFIED
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str = ""

    def to_pb(self, worker_id: str) -> pb.TokenChunk:
        return pb.TokenChunk(request_id=self.request_id, attempt=self.attempt, index=self.index,
                             token_ids=self.token_ids, text=self.text, outcome=Outcome(self.outcome).to_pb(),
                             prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens,
                             error=self.error, worker_id=worker_id)


class _GatewayLink:
    def __init__(self, address: str, sender_id: str, on_cancel: Callable[[str], None], auth: InternalAuth):
        self.address = address
        self.auth = auth
        self.sender_id = sender_id
        self.on_cancel = on_cancel
        self.outbox: asyncio.Queue[pb.StreamTokensRequest | None] = asyncio.Queue()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        backoff = 0.05
        while True:
            channel = self.auth.aio_channel(self.address)
            try:
                stub = token_sink_pb2_grpc.TokenSinkServiceStub(channel)
                call = stub.StreamTokens(self._requests())
                async for response in call:
                    backoff = 0.05
                    for request_id in response.cancel_request_ids:
                        self.on_cancel(request_id)
                return
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as e:
                log.warning("token sink stream broke", gateway=self.address, code=e.code().name)
            finally:
                await channel.close()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    async def _requests(self):
        while True:
            message = await self.outbox.get()
            if message is None:
                return
            yield message


class SinkClient:
    """Sends token chunks to the gateways that own the requests."""

    def __init__(self, sender_id: str, on_cancel: Callable[[str], None] = lambda _rid: None,
                 auth: InternalAuth | None = None):
        self.sender_id = sender_id
        #: This process's internal credential, attached to every call into a gateway's sink.
        self.auth = auth or InternalAuth()
        self.on_cancel = on_cancel
        self._links: dict[str, _GatewayLink] = {}

    def send(self, reply_to: str, chunks: list[OutChunk]) -> None:
        link = self._links.get(reply_to)
        if link is None or link.task.done():
            link = self._links[reply_to] = _GatewayLink(reply_to, self.sender_id, self.on_cancel, self.auth)
        link.outbox.put_nowait(pb.StreamTokensRequest(chunks=[c.to_pb(self.sender_id) for c in chunks]))

    async def flush(self, timeout: float = 2.0) -> None:
        """Wait (bounded) until every queued chunk has been handed to gRPC."""
        deadline = asyncio.get_running_loop().time() + timeout
        while any(link.outbox.qsize() for link in self._links.values()):
            if asyncio.get_running_loop().time() > deadline:
                return
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        await self.flush()
        for link in self._links.values():
            link.task.cancel()
            with contextlib.suppress(BaseException):
                await link.task
        self._links.clear()


@dataclass
class Progress:
    """What the client of a request already received (answer to a fence)."""

    token_ids: list[int]
    text: str


async def fence(address: str, request_id: str, attempt: int, timeout: float = 2.0,
                auth: InternalAuth | None = None) -> Progress | None:
    """Start `attempt` of a request at its gateway; None when no client waits for it any more
    (or the gateway is gone, or refused us, which is the same thing for the request)."""
    try:
        async with (auth or InternalAuth()).aio_channel(address) as channel:
            stub = token_sink_pb2_grpc.TokenSinkServiceStub(channel)
            reply = await stub.Fence(pb.FenceRequest(request_id=request_id, attempt=attempt), timeout=timeout)
    except grpc.aio.AioRpcError as e:
        log.warning("fence failed; dropping the request", gateway=address, request_id=request_id,
                    code=e.code().name)
        return None
    if not reply.found:
        return None
    return Progress(list(reply.delivered_token_ids), reply.delivered_text)
