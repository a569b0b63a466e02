"""The one way a service opens its Redis client: pooled connections that heal after a restart.

After Redis restarts, every pooled connection is stale and its first command fails with
"Connection closed by server" (redis-py retries only errors listed in `retry_on_error`, and
none are by default). One immediate retry on a fresh connection turns that into a success, and
still fails fast while Redis is really down (the reconnect is refused at once). Timeouts are not
retried: a late answer may mean the command ran, and the callers decide what a timeout means.
"""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError


def connect(url: str, *, socket_timeout: float, connect_timeout: float | None = None) -> aioredis.Redis:
    """An asyncio client for `url` (credentials and TLS come from the URL)."""
    return aioredis.Redis.from_url(
        url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout if connect_timeout is not None else socket_timeout,
        retry=Retry(NoBackoff(), 1),
        retry_on_error=[RedisConnectionError],
    )
