"""Redis credentials: the minimal ACL of each service, and the start-up check of REDIS_URL.

REDIS_URL takes user and password (`redis://svc-gateway:<password>@redis:6379/0`, Redis 6+
ACL users; `redis://:<password>@...` for the default user of `requirepass`) and TLS
(`rediss://...`, with `?ssl_ca_certs=/path/ca.pem`, `ssl_certfile`, `ssl_keyfile` for client
certificates); redis-py reads them all from the URL, in every service and the CLI.

Each service needs only its own keys (see redis_keys.py) and the commands of streams, hashes,
lists, sets, sorted sets and Lua scripts: `ACL SETUSER <user> <ACL_RULES[service]>` with
`>password` added. `-@dangerous` keeps FLUSHALL, KEYS, CONFIG, DEBUG, MONITOR out.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, AuthorizationError, NoPermissionError, ResponseError

from .redis_client import SENTINEL_SCHEME, parse_sentinel_url

_COMMANDS = "-@all +@read +@write +@scripting +@connection +@transaction +time -@dangerous"
_P = "~llmserve:"
_KEYS = {
    "gateway": "requests:* request:* cancel:* apikey:* apikeys ratelimit:* model:* models workers heartbeat:* "
               "gateway:* result:*",
    "scheduler": "requests:* worker:* workers heartbeat:* request:* cancel:* deadletter recovering:* model:* models "
                 "fair:* schedulers scheduler_stats:*",
    "worker": "worker:* workers heartbeat:* request:* cancel:* requests:* model:* models fair:* gateway:* result:*",
    "monitor": "workers heartbeat:* model:* models",
}
#: ACL rules per service (without the password): `ACL SETUSER svc-<name> on >pw <rules>`.
ACL_RULES: dict[str, str] = {
    name: "resetkeys " + " ".join(_P + k for k in keys.split()) + " resetchannels " + _COMMANDS
    for name, keys in _KEYS.items()
}
#: The CLI (keys, models registry, status) works on every llmserve key.
ACL_RULES["cli"] = f"resetkeys {_P}* resetchannels {_COMMANDS}"


class RedisCredentialsError(RuntimeError):
    """Redis refused REDIS_URL's credentials or their rights: a configuration error at start."""


def describe(url: str) -> str:
    """The URL without its password, for messages."""
    target = parse_sentinel_url(url)
    if target is not None:
        hosts = ",".join(f"{host}:{port}" for host, port in target.sentinels)
        user = target.username or ("default" if target.password else "")
        return f"{SENTINEL_SCHEME}{user + '@' if user else ''}{hosts}/{target.master}"
    parts = urlsplit(url)
    user = parts.username or ("default" if parts.password else "")
    host = parts.hostname or "?"
    return f"{parts.scheme}://{user + '@' if user else ''}{host}:{parts.port or 6379}{parts.path}"


async def check_credentials(redis: aioredis.Redis, url: str) -> None:
    """Ping Redis once at start: wrong credentials fail now, with a clear message. An
    unreachable Redis is not an error here: serving rides out outages (see DESIGN.md)."""
    try:
        await redis.ping()
    except (AuthenticationError, AuthorizationError, NoPermissionError) as e:
        raise RedisCredentialsError(
            f"Redis at {describe(url)} refused the credentials in REDIS_URL: {e}") from e
    except ResponseError as e:
        if "NOAUTH" in str(e) or "WRONGPASS" in str(e) or "NOPERM" in str(e):
            raise RedisCredentialsError(f"Redis at {describe(url)} refused REDIS_URL: {e}") from e
        raise
    except (OSError, aioredis.ConnectionError, aioredis.TimeoutError):
        return
