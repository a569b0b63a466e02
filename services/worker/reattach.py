"""Where a request's tokens go when its client re-attached through another gateway, what is
kept of a finished request, and stopping work whose gateway died and nobody came back for.

* **Switch**: a request's owner is the `gateway` of its record in Redis. A re-attaching
  gateway writes itself there and calls `Reattach` here; the worker also re-reads the record
  when it starts a request and before it gives one up, so a missed call only delays the move.
  A switch resends every chunk this attempt made (the gateway delivers only those from the
  client's index on, and records the rest so that a later fence answers the whole progress), ends the old gateway's stream of it with CANCELLED, and from then
  on ignores that gateway's cancellations of it.
* **Results**: a finished request's chunks are stored (`llmserve:result:{id}`) for
  `result_ttl_s`, and the record's state becomes `finished`; until the write is done the
  chunks stay in memory here, so no re-attach falls between the two.
* **Orphans**: every gateway renews `llmserve:gateway:{address}`. A request whose gateway's
  key has been gone for `orphan_grace_s` (and whose record still names that gateway) is
  cancelled: its sequence stops at the next step and its KV blocks are freed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from llmserve.common import redis_keys as keys
from llmserve.common.gateways import gone_gateways
from llmserve.common.logging import get_logger
from llmserve.common.outcome import Outcome
from llmserve.common.tokensink.client import OutChunk, SinkClient
from llmserve.common.tokensink.v1 import token_sink_pb2

from .active import Active

log = get_logger(__name__)

# KEYS: record, result. ARGV: result bytes, TTL ms (0: not kept). The record is only updated,
# never created (an expired one stays gone).
_FINISH = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'state', 'finished') end
if tonumber(ARGV[2]) > 0 then redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2]) end
return 1
"""


class ReplyRouter:
    """See the module docstring. `active` is the runtime's table of held requests."""

    def __init__(self, redis: aioredis.Redis, sink: SinkClient, worker_id: str, active: dict[str, Active],
                 cancel: Callable[[str], bool], grace_s: float, result_ttl_s: float):
        self.redis = redis
        self.sink = sink
        self.worker_id = worker_id
        self.active = active
        self.cancel = cancel
        self.grace_s = grace_s
        self.result_ttl_ms = int(result_ttl_s * 1000)
        self.recent: dict[str, Active] = {}  # finished, result not written yet
        self._gone_since: dict[str, float] = {}
        self._finish = redis.register_script(_FINISH)
        self._writes: set[asyncio.Task] = set()

    def reattach(self, request_id: str, reply_to: str, from_index: int) -> bool:
        """Send the request's tokens to `reply_to` from now on; False if it is not here."""
        active = self.active.get(request_id) or self.recent.get(request_id)
        if active is None:
            return False
        self.switch(request_id, active, reply_to, from_index)
        return True

    def switch(self, request_id: str, active: Active, reply_to: str, from_index: int) -> None:
        old = active.reply_to
        if old != reply_to:
            active.reply_to = reply_to
            # At the end of what the old gateway got on this link, so it takes the outcome.
            last = active.sent[-1] if active.sent else None
            delivered = last.index + len(last.token_ids) if last else 0
            if not any(c.outcome for c in active.sent):
                self.sink.send(old, [OutChunk(request_id, active.attempt, delivered, [], "", outcome=Outcome.CANCELLED,
                                              error="the client re-attached through another gateway")])
            log.info("request re-attached", request_id=request_id, old_gateway=old, gateway=reply_to,
                     from_index=from_index)
        if active.sent:  # all of them: see the module docstring
            self.sink.send(reply_to, list(active.sent))

    def accepts_cancel(self, request_id: str, gateway: str) -> bool:
        """A cancellation from a gateway that no longer owns the request is ignored."""
        active = self.active.get(request_id)
        return active is None or active.reply_to == gateway

    def finished(self, request_id: str, active: Active) -> None:
        """Keep the finished request's chunks until they are stored (see the module docstring)."""
        self.recent[request_id] = active
        task = asyncio.ensure_future(self._store(request_id, active))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _store(self, request_id: str, active: Active) -> None:
        result = token_sink_pb2.StoredResult(chunks=[c.to_pb(self.worker_id) for c in active.sent],
                                             tenant=active.tenant)
        try:
            await self._finish(keys=[keys.request_key(request_id), keys.result_key(request_id)],
                               args=[result.SerializeToString(), self.result_ttl_ms])
        except RedisError as e:
            log.warning("could not store the finished result", request_id=request_id, error=type(e).__name__)
        finally:
            if self.recent.get(request_id) is active:
                del self.recent[request_id]

    async def adopt_owners(self, request_ids: list[str]) -> None:
        """Follow the record's owner of each request (a re-attach whose call did not reach us)."""
        if not request_ids:
            return
        pipe = self.redis.pipeline(transaction=False)
        for rid in request_ids:
            pipe.hget(keys.request_key(rid), "gateway")
        for rid, owner in zip(request_ids, await pipe.execute(), strict=True):
            active = self.active.get(rid)
            if owner and active is not None and owner.decode() != active.reply_to:
                self.switch(rid, active, owner.decode(), 0)

    async def stop_orphans(self) -> list[str]:
        """Cancel the requests whose gateway has been gone past the grace; their ids."""
        owners = sorted({a.reply_to for a in self.active.values()})
        gone = await gone_gateways(self.redis, owners)
        now = time.monotonic()
        self._gone_since = {a: self._gone_since.get(a, now) for a in gone}
        suspects = [rid for rid, a in self.active.items() if a.reply_to in gone]
        await self.adopt_owners(suspects)
        stopped = []
        for rid in suspects:
            active = self.active.get(rid)
            if active is None or active.reply_to not in gone:
                continue  # finished meanwhile, or its client re-attached elsewhere
            if now - self._gone_since[active.reply_to] >= self.grace_s and self.cancel(rid):
                log.warning("gateway gone and nobody re-attached; request cancelled", request_id=rid,
                            gateway=active.reply_to, grace_s=self.grace_s)
                stopped.append(rid)
        return stopped

    async def watch(self, interval_s: float) -> None:
        """The orphan loop (supervised by the runtime)."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.stop_orphans()
            except RedisError as e:  # nothing is cancelled while Redis cannot say who is alive
                log.warning("orphan check failed", error=type(e).__name__)
