"""The one way every process opens its Redis client: pooled connections that heal after a
restart, and follow the primary after a Sentinel failover.

After Redis restarts, every pooled connection is stale and its first command fails with
"Connection closed by server" (redis-py retries only errors listed in `retry_on_error`, and
none are by default). One immediate retry on a fresh connection turns that into a success, and
still fails fast while Redis is really down (the reconnect is refused at once). Timeouts are not
retried: a late answer may mean the command ran, and the callers decide what a timeout means.

`redis+sentinel://[user:password@]host:port[,host:port...]/<master>[/<db>][?sentinel_password=...]`
names Sentinels instead of a server: each new connection asks them for the current primary, and
a connection that finds its server demoted (READONLY) or gone reconnects to the new one, so a
failover costs the commands in flight during it, never a process restart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

SENTINEL_SCHEME = "redis+sentinel://"


@dataclass(frozen=True)
class SentinelTarget:
    """What a `redis+sentinel://` URL names."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None


def parse_sentinel_url(url: str) -> SentinelTarget | None:
    """The Sentinel target of `url`; None for an ordinary `redis://` / `rediss://` / `unix://` URL.

    Raises ValueError naming what is wrong with a malformed Sentinel URL."""
    if not url.startswith(SENTINEL_SCHEME):
        return None
    rest, _, query = url[len(SENTINEL_SCHEME):].partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, _, hosts = netloc.rpartition("@")
    username = password = None
    if userinfo:
        user, sep, secret = userinfo.partition(":")
        username, password = (unquote(user) or None), (unquote(secret) if sep else None)
    sentinels = []
    for host_port in filter(None, hosts.split(",")):
        host, sep, port = host_port.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"Sentinel address {host_port!r} must be host:port")
        sentinels.append((host.strip("[]"), int(port)))
    if not sentinels:
        raise ValueError("a redis+sentinel:// URL names at least one Sentinel host:port")
    parts = [p for p in path.split("/") if p]
    if not parts or len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
        raise ValueError("a redis+sentinel:// URL ends in /<master name>[/<db number>]")
    options = parse_qs(query)
    return SentinelTarget(
        sentinels=tuple(sentinels), master=unquote(parts[0]), db=int(parts[1]) if len(parts) == 2 else 0,
        username=username, password=password,
        sentinel_password=options.get("sentinel_password", [None])[0],
    )


def connect(url: str, *, socket_timeout: float | None, connect_timeout: float | None = None) -> aioredis.Redis:
    """An asyncio client for `url` (credentials and TLS come from the URL)."""
    connect_timeout = connect_timeout if connect_timeout is not None else socket_timeout
    healing: dict[str, Any] = {"retry": Retry(NoBackoff(), 1), "retry_on_error": [RedisConnectionError]}
    target = parse_sentinel_url(url)
    if target is None:
        return aioredis.Redis.from_url(
            url, socket_timeout=socket_timeout, socket_connect_timeout=connect_timeout, **healing
        )
    from redis.asyncio.sentinel import Sentinel  # only where Sentinels are named

    sentinel = Sentinel(
        list(target.sentinels),
        sentinel_kwargs={"socket_timeout": connect_timeout, "socket_connect_timeout": connect_timeout,
                         "password": target.sentinel_password},
    )
    return sentinel.master_for(
        target.master, redis_class=aioredis.Redis, db=target.db,
        username=target.username, password=target.password,
        socket_timeout=socket_timeout, socket_connect_timeout=connect_timeout, **healing,
    )
