"""Redis Streams helpers: consumer groups, reading, acknowledging, reclaiming.

Delivery is at-least-once: a consumer acknowledges an entry only after handing it over,
and entries a dead consumer held are reclaimed with XAUTOCLAIM once idle long enough.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from .logging import get_logger
from .redis_keys import PAYLOAD_FIELD

log = get_logger(__name__)


@dataclass(frozen=True)
class StreamEntry:
    stream: str
    entry_id: str
    payload: bytes


def past_deadline(deadline_unix_ms: int, now_ms: float | None = None) -> bool:
    """Whether a work item's deadline (unix ms; 0: none) has passed."""
    if now_ms is None:
        now_ms = time.time() * 1000
    return 0 < deadline_unix_ms <= now_ms


async def consume_forever(
    step: Callable[[], Awaitable[None]],
    running: Callable[[], bool],
    on_lost_groups: Callable[[], Awaitable[None]],
    retry_s: float = 0.2,
) -> None:
    """Call `step` while `running()`, riding out Redis outages.

    A Redis error is retried after `retry_s`. NOGROUP means Redis lost its data (a restart
    without persistence): the consumer groups are gone, so `on_lost_groups` makes them again
    (or forgets them) before the next step.
    """
    while running():
        try:
            await step()
        except RedisError as e:
            if "NOGROUP" in str(e):
                await on_lost_groups()
                continue
            log.warning("redis unavailable; retrying", error=type(e).__name__)
            await asyncio.sleep(retry_s)


async def ensure_group(r: aioredis.Redis, stream: str, group: str) -> None:
    """Create the consumer group (and the stream) if missing."""
    try:
        await r.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as e:
        if "BUSYGROUP" not in str(e):
            raise


def _entries(stream: str | bytes, items) -> list[StreamEntry]:
    name = stream.decode() if isinstance(stream, bytes) else stream
    out = []
    for entry_id, fields in items:
        if not fields:  # the entry was deleted while pending
            continue
        eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
        out.append(StreamEntry(name, eid, fields[PAYLOAD_FIELD.encode()]))
    return out


async def read_group(
    r: aioredis.Redis, group: str, consumer: str, streams: list[str], *, count: int, block_ms: int | None
) -> list[StreamEntry]:
    """New entries for this consumer from any of `streams` (blocks up to block_ms; None: not at all)."""
    if not streams:
        return []
    # [(stream, [(id, fields), ...]), ...]; redis-py types replies loosely.
    reply: Any = await r.xreadgroup(group, consumer, {s: ">" for s in streams}, count=count, block=block_ms)
    out: list[StreamEntry] = []
    for stream, items in reply or []:
        out.extend(_entries(stream, items))
    return out


async def read_own_pending(r: aioredis.Redis, group: str, consumer: str, stream: str, count: int = 1000):
    """Entries this consumer read but never acknowledged (e.g. before a restart)."""
    reply: Any = await r.xreadgroup(group, consumer, {stream: "0"}, count=count)
    out: list[StreamEntry] = []
    for s, items in reply or []:
        out.extend(_entries(s, items))
    return out


async def reclaim_stale(
    r: aioredis.Redis, stream: str, group: str, consumer: str, *, min_idle_ms: int, count: int = 100
) -> list[StreamEntry]:
    """Take over entries other consumers held for longer than min_idle_ms."""
    reply = await r.xautoclaim(stream, group, consumer, min_idle_time=min_idle_ms, start_id="0-0", count=count)
    return _entries(stream, reply[1])


async def ack(r: aioredis.Redis, stream: str, group: str, entry_id: str, *, delete: bool = True) -> None:
    """Acknowledge an entry; delete it too, since nobody reads a handled request again."""
    pipe = r.pipeline(transaction=False)
    pipe.xack(stream, group, entry_id)
    if delete:
        pipe.xdel(stream, entry_id)
    await pipe.execute()
