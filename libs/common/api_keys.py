"""API keys stored in Redis: only their SHA-256 digests, looked up by a public key id.

A raw key is `llmsk_<key id>_<secret>` (the secret has 256 random bits, so a plain SHA-256
is enough; no password hashing needed). The key id finds the record without scanning;
the digest is then compared in constant time. The raw key exists only in the answer to
`create`. Lookups are cached for `cache_s` seconds at most, so a revoked key stops
working within that time on every gateway.

Redis data (prefix `llmserve:`): `apikey:{key_id}` hash (digest, tenant, models JSON,
limits JSON, name, created_unix), `apikeys` set of key ids.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import asdict, dataclass, field

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from redis.typing import EncodableT, FieldT

from llmserve.common.errors import Unavailable
from llmserve.common.redis_keys import PREFIX

KEY_PREFIX = "llmsk"
LIMIT_NAMES = ("requests_per_minute", "tokens_per_minute", "max_concurrent_streams")
KEYS_SET = f"{PREFIX}:apikeys"
_CACHE_MAX = 10_000


def key_record_key(key_id: str) -> str:
    return f"{PREFIX}:apikey:{key_id}"


@dataclass
class KeyRecord:
    """What is stored for one key (never the key itself)."""

    key_id: str
    tenant: str
    digest: str
    models: list[str] = field(default_factory=list)  # empty: every model
    limits: dict[str, int] = field(default_factory=dict)  # overrides of the settings' defaults
    name: str = ""
    created_unix: int = 0

    def limit_overrides(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.limits.items() if k in LIMIT_NAMES}

    def model_set(self) -> frozenset[str] | None:
        return frozenset(self.models) if self.models else None

    def public(self) -> dict:
        """The record without its digest, for listing."""
        out = asdict(self)
        del out["digest"]
        return out


class ApiKeyStore:
    """Create, list, revoke and check API keys kept in Redis."""

    def __init__(self, redis: aioredis.Redis, cache_s: float = 2.0):
        self._redis = redis
        self._cache_s = cache_s
        self._cache: dict[str, tuple[float, KeyRecord | None]] = {}
        self._loading: dict[str, asyncio.Future] = {}

    async def create(
        self,
        tenant: str,
        models: list[str] | None = None,
        limits: dict[str, int] | None = None,
        name: str = "",
    ) -> tuple[KeyRecord, str]:
        """A new key for `tenant`; returns its record and the raw key (shown once, never stored)."""
        if not tenant:
            raise ValueError("tenant must not be empty")
        unknown = set(limits or {}) - set(LIMIT_NAMES)
        if unknown:
            raise ValueError(f"unknown limits {sorted(unknown)}; known: {', '.join(LIMIT_NAMES)}")
        key_id = secrets.token_hex(6)
        raw = f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
        record = KeyRecord(
            key_id,
            tenant,
            _digest(raw),
            sorted(models or []),
            {k: int(v) for k, v in (limits or {}).items() if v is not None},
            name,
            int(time.time()),
        )
        fields: dict[FieldT, EncodableT] = {
            "digest": record.digest,
            "tenant": tenant,
            "models": json.dumps(record.models),
            "limits": json.dumps(record.limits),
            "name": name,
            "created_unix": record.created_unix,
        }
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key_record_key(key_id), mapping=fields)
            pipe.sadd(KEYS_SET, key_id)
            await pipe.execute()
        return record, raw

    async def list(self) -> list[KeyRecord]:
        ids = sorted(_text(i) for i in await self._redis.smembers(KEYS_SET))
        records = [await self._load(key_id) for key_id in ids]
        return [r for r in records if r is not None]

    async def revoke(self, key_id: str) -> bool:
        """Delete the key; True if it existed. Gateways stop accepting it within `cache_s`."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(key_record_key(key_id))
            pipe.srem(KEYS_SET, key_id)
            deleted, _ = await pipe.execute()
        self._cache.pop(key_id, None)
        return bool(deleted)

    async def lookup(self, raw: str) -> KeyRecord | None:
        """The record of a raw key, or None when it is unknown, malformed or revoked."""
        prefix, _, rest = raw.partition("_")
        key_id, _, secret = rest.partition("_")
        if prefix != KEY_PREFIX or not key_id or not secret:
            return None
        record = await self._cached(key_id)
        if record is None or not hmac.compare_digest(record.digest, _digest(raw)):
            return None
        return record

    async def _cached(self, key_id: str) -> KeyRecord | None:
        hit = self._cache.get(key_id)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        # One Redis lookup per key id at a time: a burst on one key costs one round trip.
        pending = self._loading.get(key_id)
        if pending is None:
            pending = self._loading[key_id] = asyncio.ensure_future(self._refresh(key_id))
            pending.add_done_callback(lambda _f: self._loading.pop(key_id, None))
        return await asyncio.shield(pending)

    async def _refresh(self, key_id: str) -> KeyRecord | None:
        try:
            record = await self._load(key_id)
        except RedisError as e:
            raise Unavailable(f"API key store unreachable: {type(e).__name__}", retry_after_s=1.0) from e
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()  # bounded: a flood of made-up key ids must not grow memory
        self._cache[key_id] = (time.monotonic() + self._cache_s, record)
        return record

    async def _load(self, key_id: str) -> KeyRecord | None:
        raw = await self._redis.hgetall(key_record_key(key_id))
        if not raw:
            return None
        f = {_text(k): _text(v) for k, v in raw.items()}
        return KeyRecord(
            key_id,
            f["tenant"],
            f["digest"],
            json.loads(f.get("models", "[]")),
            json.loads(f.get("limits", "{}")),
            f.get("name", ""),
            int(f.get("created_unix", 0)),
        )


def _text(value: bytes | str) -> str:
    # The client is made without decode_responses: Redis answers bytes.
    return value.decode() if isinstance(value, bytes) else value


def _digest(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()
