"""Which requests an internal caller may touch through the token sink.

The internal-auth interceptor has already proven who calls and that its role may call the
method at all (workers and schedulers). What is left is per request:

* a **worker** may stream tokens into, and fence, only requests placed on it: the request's
  record in Redis (`llmserve:request:{id}`, field `worker`, written by the scheduler's
  dispatch in the same script that hands the work over) names it. It may not claim another
  worker's id on its chunks either (cancellations are routed by that id). A fence answer
  gives it the progress of its own request only: tokens it or an earlier attempt made for
  the work it holds, which its work item already carries.
* a **scheduler** may fence any request (dead-worker recovery reads what the client already
  has) and send any request's final error (deadlines of requests that never ran).

With internal auth off there is no caller, and everything is allowed: such ports listen on
loopback only.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from llmserve.common import redis_keys as keys
from llmserve.common.errors import PermissionDenied, Unavailable
from llmserve.common.internal_auth import Caller
from llmserve.common.logging import get_logger

log = get_logger(__name__)


class SinkAuthorizer:
    """Per-request checks for the token sink (see the module docstring)."""

    def __init__(self, redis: aioredis.Redis):
        self.redis = redis

    async def placed_on(self, request_id: str) -> str:
        """The worker the request is placed on now ('' if none)."""
        try:
            worker = await self.redis.hget(keys.request_key(request_id), "worker")
        except Exception as e:  # Redis down: nothing can be proven, so nothing is allowed
            raise Unavailable(f"cannot check the request's placement: {type(e).__name__}") from e
        return worker.decode() if worker else ""

    async def check_fence(self, caller: Caller | None, request_id: str) -> None:
        if caller is None or caller.role == "scheduler":
            return
        if caller.role == "worker" and await self.placed_on(request_id) == caller.id:
            return
        log.warning("fence refused", caller=f"{caller.role}.{caller.id}", request_id=request_id)
        raise PermissionDenied(f"{caller.role} {caller.id!r} may not fence request {request_id!r}")

    def stream_checker(self, caller: Caller | None) -> StreamChecker:
        return StreamChecker(self, caller)


class StreamChecker:
    """The checks of one StreamTokens stream; remembers requests already allowed on it so a
    request costs one Redis read per stream, not one per chunk."""

    def __init__(self, authz: SinkAuthorizer, caller: Caller | None):
        self.authz = authz
        self.caller = caller
        self._allowed: set[str] = set()

    async def allows(self, request_id: str, worker_id: str, final: bool) -> bool:
        """Whether the caller may stream into the request; raises Unavailable while unprovable."""
        caller = self.caller
        if caller is None or caller.role == "scheduler":
            return True
        if worker_id != caller.id:
            log.warning("chunk under another worker's id refused", caller=caller.id, claimed=worker_id)
            return False
        ok = request_id in self._allowed or await self._placed_here(request_id)
        if ok and not final:
            self._allowed.add(request_id)
        else:
            self._allowed.discard(request_id)
        return ok

    async def _placed_here(self, request_id: str) -> bool:
        """Raises Unavailable while Redis cannot say: "cannot check now" is not "not yours", and
        the caller must not drop (or acknowledge) the tokens for it."""
        assert self.caller is not None
        placed = await self.authz.placed_on(request_id)
        if placed != self.caller.id:
            log.warning("tokens for a request placed elsewhere refused", caller=self.caller.id,
                        request_id=request_id, placed_on=placed)
            return False
        return True
