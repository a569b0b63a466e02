"""Client side of the gateway's token sink, used by workers (tokens) and schedulers
(final errors such as DEADLINE_EXCEEDED for requests that never ran).

One long-lived bidirectional stream per gateway address; chunks are sent in order and kept
until the gateway acknowledges them, so a broken stream is reopened with backoff and resends
what the gateway may not have processed (it drops what it had). The gateway's cancellations
are handed to `on_cancel`.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from llmserve.common.internal_auth import InternalAuth
from llmserve.common.logging import get_logger
from llmserve.common.logprobs import TokenLogprob, to_sink_pb
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
    logprobs: list[TokenLogprob] | None = None  # one per token, when the request asked
    prompt_logprobs: list[TokenLogprob] | None = None  # prompt tokens 1.., once (echo)

    def to_pb(self, worker_id: str) -> pb.TokenChunk:
        chunk = pb.TokenChunk(request_id=self.request_id, attempt=self.attempt, index=self.index,
                              token_ids=self.token_ids, text=self.text, worker_id=worker_id)
        # One chunk per sequence per step: the fields of a final chunk, and logprobs, only when set.
        if self.outcome or self.prompt_tokens or self.completion_tokens or self.error:
            chunk.outcome = Outcome(self.outcome).to_pb()
            chunk.prompt_tokens, chunk.completion_tokens, chunk.error = (self.prompt_tokens,
                                                                         self.completion_tokens, self.error)
        if self.logprobs:
            chunk.logprobs.extend(to_sink_pb(lp) for lp in self.logprobs)
        if self.prompt_logprobs is not None:
            chunk.prompt_logprobs.extend(to_sink_pb(lp) for lp in self.prompt_logprobs)
            chunk.has_prompt_logprobs = True
        return chunk


class _GatewayLink:
    """One sender's stream to one gateway, exact across reconnects.

    Every message gets the next `seq` on this link and stays in `pending` until the gateway
    acknowledges it. Each stream attempt has its own request generator that only reads
    `pending` (it never takes from a shared queue), so a broken attempt's generator, which
    grpc may leave suspended, can neither swallow a later message nor send out of turn. A new
    attempt first resends everything unacknowledged; the gateway drops the seqs it already
    processed, so each message is processed exactly once while the gateway lives. A gateway
    that restarted has no record of the requests and answers their chunks with cancellations.
    """

    #: Unacknowledged messages kept for resending; past it the oldest go (the gateway has been
    #: unreachable for thousands of steps, so its clients are gone).
    MAX_PENDING = 4096

    def __init__(self, address: str, sender_id: str, on_cancel: Callable[[str, str], None], auth: InternalAuth):
        self.address = address
        self.auth = auth
        self.sender_id = sender_id
        self.on_cancel = on_cancel
        self.link_id = f"{sender_id}/{uuid.uuid4().hex[:12]}"
        self.pending: deque[pb.StreamTokensRequest] = deque()
        self._next_seq = 1
        self._attempt = 0
        self._wake = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    def put(self, message: pb.StreamTokensRequest) -> None:
        message.link_id, message.seq = self.link_id, self._next_seq
        self._next_seq += 1
        self.pending.append(message)
        if len(self.pending) > self.MAX_PENDING:
            dropped = self.pending.popleft()
            log.warning("token sink backlog full; dropping the oldest message", gateway=self.address,
                        seq=dropped.seq)
        self._wake.set()

    def acknowledge(self, acked_seq: int) -> None:
        while self.pending and self.pending[0].seq <= acked_seq:
            self.pending.popleft()

    async def _run(self) -> None:
        backoff = 0.05
        while True:
            self._attempt += 1  # the attempt this stream's request generator belongs to
            channel = self.auth.aio_channel(self.address)
            try:
                stub = token_sink_pb2_grpc.TokenSinkServiceStub(channel)
                call = stub.StreamTokens(self._requests(self._attempt))
                async for response in call:
                    backoff = 0.05
                    if response.acked_seq:
                        self.acknowledge(response.acked_seq)
                    for request_id in response.cancel_request_ids:
                        self.on_cancel(request_id, self.address)
                # Only the gateway ends a stream (this side never does): reconnect and resend.
                log.warning("token sink stream ended by the gateway", gateway=self.address)
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as e:
                log.warning("token sink stream broke", gateway=self.address, code=e.code().name)
            finally:
                self._attempt += 1  # retires this attempt's generator before the next one starts
                self._wake.set()
                await channel.close()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    async def _requests(self, attempt: int):
        """This attempt's messages: the unacknowledged ones, then each new one, in seq order."""
        sent = 0
        while attempt == self._attempt:
            batch = [m for m in self.pending if m.seq > sent]
            if not batch:
                self._wake.clear()
                await self._wake.wait()
                continue
            for message in batch:
                if attempt != self._attempt:
                    return
                sent = message.seq
                yield message


class SinkClient:
    """Sends token chunks to the gateways that own the requests."""

    def __init__(self, sender_id: str, on_cancel: Callable[[str], None] = lambda _rid: None,
                 auth: InternalAuth | None = None, on_cancel_from: Callable[[str, str], None] | None = None):
        self.sender_id = sender_id
        #: This process's internal credential, attached to every call into a gateway's sink.
        self.auth = auth or InternalAuth()
        #: Called with (request id, gateway address) when given (a worker ignores a gateway that
        #: no longer owns the request: its client re-attached elsewhere); else `on_cancel(id)`.
        self.on_cancel: Callable[[str, str], None] = on_cancel_from or (lambda rid, _gateway: on_cancel(rid))
        self._links: dict[str, _GatewayLink] = {}

    def send(self, reply_to: str, chunks: list[OutChunk]) -> None:
        link = self._links.get(reply_to)
        if link is None or link.task.done():
            link = self._links[reply_to] = _GatewayLink(reply_to, self.sender_id, self.on_cancel, self.auth)
        link.put(pb.StreamTokensRequest(chunks=[c.to_pb(self.sender_id) for c in chunks]))

    async def flush(self, timeout: float = 2.0) -> None:
        """Wait (bounded) until the gateways have acknowledged every chunk sent."""
        deadline = asyncio.get_running_loop().time() + timeout
        while any(link.pending for link in self._links.values()):
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
