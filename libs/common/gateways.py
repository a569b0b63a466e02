"""Which gateways are alive: each registers its token-sink address in Redis with a TTL and
renews it; a worker holding requests for an address whose key is gone knows their client can
only come back by re-attaching through another gateway (see docs/reattach.md)."""

from __future__ import annotations

import redis.asyncio as aioredis

from . import redis_keys as keys


async def register_gateway(r: aioredis.Redis, address: str, ttl_ms: int) -> None:
    """Say (again) that the gateway at `address` is alive, for `ttl_ms`."""
    await r.set(keys.gateway_key(address), "1", px=ttl_ms)


async def withdraw_gateway(r: aioredis.Redis, address: str) -> None:
    await r.delete(keys.gateway_key(address))


async def gone_gateways(r: aioredis.Redis, addresses: list[str]) -> set[str]:
    """The addresses among `addresses` with no live registration."""
    if not addresses:
        return set()
    pipe = r.pipeline(transaction=False)
    for address in addresses:
        pipe.exists(keys.gateway_key(address))
    alive = await pipe.execute()
    return {a for a, ok in zip(addresses, alive, strict=True) if not ok}
