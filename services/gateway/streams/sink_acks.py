"""The token sink's answers to one sender: cancellations at once, acknowledgements batched.

A worker sends a message per engine step. Answering each with its own acknowledgement costs a
gRPC message each way per token, so an ack that comes within ACK_DELAY_S of the last one sent
is held and goes out with the next answer: a cancellation, a later ack past the delay, or a
timer at the end of the delay. An ack after a quiet spell goes out at once (a slow stream pays
nothing). Holding an ack loses nothing: the sender keeps, and after a reconnect resends, what is
unacknowledged; the gateway drops what it already processed.
"""

from __future__ import annotations

import asyncio
import math

from llmserve.common.errors import Unavailable
from llmserve.common.tokensink.v1 import token_sink_pb2

#: How long after an acknowledgement the next one may be held.
ACK_DELAY_S = 0.05
#: What the outbox carries: a request id to cancel, an int seq to acknowledge, "" when the sender
#: closed, or an Unavailable that ends the stream.
OutboxItem = str | int | Unavailable
_FLUSH = -1  # the hold timer fired (seqs are positive)


class SinkResponses:
    """Turns one stream's outbox into its responses (see the module docstring)."""

    def __init__(self, outbox: asyncio.Queue[OutboxItem]):
        self.outbox = outbox
        self._held = 0  # the newest seq received and not yet acknowledged
        self._last_sent = -math.inf
        self._timer: asyncio.TimerHandle | None = None

    async def next(self) -> token_sink_pb2.StreamTokensResponse | None:
        """The next response; None once the sender closed its side; raises Unavailable."""
        while True:
            items = [await self.outbox.get()]
            while not self.outbox.empty():
                items.append(self.outbox.get_nowait())
            response, flush = token_sink_pb2.StreamTokensResponse(), False
            for item in items:
                if isinstance(item, Unavailable):
                    raise item  # UNAVAILABLE: the sender reconnects and resends what is unacknowledged
                if item == "":
                    return None
                if isinstance(item, int):
                    flush = flush or item == _FLUSH
                    self._held = max(self._held, item)
                else:
                    response.cancel_request_ids.append(item)
            now = asyncio.get_running_loop().time()
            if response.cancel_request_ids or (self._held and (flush or now - self._last_sent >= ACK_DELAY_S)):
                response.acked_seq, self._held = self._held, 0
                self._last_sent = now
                return response
            if self._held and self._timer is None:
                self._timer = asyncio.get_running_loop().call_later(
                    ACK_DELAY_S - (now - self._last_sent), self._fire)

    def _fire(self) -> None:
        self._timer = None
        self.outbox.put_nowait(_FLUSH)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
