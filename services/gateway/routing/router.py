"""Which served model a request goes to: the static catalog, or the model registry.

A name in the gateway's static catalog (built-in names, directories) is served as today. Any
other name is looked up in the registry (`llmserve.common.models.registry`): `name` means
`name@active`, `name@<alias>` an alias, `name@v3` one version. An alias with a traffic split
({version: percent}) sends each request to a version chosen by a sticky hash of the tenant
(default) or of the request id (`split_sticky_by`). The request then names the *served model
id* `name@vN`: its Redis stream, the workers that may take it, its metrics and spans, and the
`model` the client gets back (as OpenAI answers with the concrete model snapshot).

Alias lookups are cached for `registry_cache_s`, so the hot path usually adds no Redis round
trip and an `activate` or a split change takes effect within that time. Tokenizers and context
lengths of versions load lazily, once per weights path.

Hot update: when the version an alias routes to has no live worker yet (just activated, its
workers still loading), the request goes to the alias's own version and then to the version
the alias pointed at before, whichever has a live worker (`registry_fallback`); with no live
worker for any of them it queues on the routed version and waits for one until its deadline.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError

from llmserve.common import redis_keys as keys
from llmserve.common.errors import InvalidArgument, ModelNotFound, Unavailable, echo
from llmserve.common.models.registry import Alias, ModelRegistry, ModelVersion, parse_ref
from llmserve.common.workers import registry_snapshot

from ..settings import GatewaySettings
from .catalog import ModelCatalog, ModelProfile, load_model_profile

_BUCKETS = 10_000  # split resolution: 0.01 %


def split_bucket(name: str, key: str) -> float:
    """Where `key` falls in [0, 100) for `name`'s splits: the same on every gateway, always.

    The model name is mixed in so that one tenant is not in the B group of every experiment.
    """
    digest = hashlib.blake2b(f"{name}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % _BUCKETS / (_BUCKETS / 100)


def choose_version(name: str, alias: Alias, key: str) -> str:
    """The version `key` is routed to: split versions take consecutive ranges of buckets
    (oldest version first), the rest goes to the alias's own version. Raising a percent only
    adds keys to that version, so a growing canary keeps the users it already has."""
    bucket = split_bucket(name, key)
    edge = 0.0
    for version in sorted(alias.split, key=lambda v: int(v[1:])):
        edge += float(alias.split[version])
        if bucket < edge:
            return version
    return alias.version


@dataclass(frozen=True)
class Route:
    """Where one request goes: `model.name` is the served model id."""

    model: ModelProfile
    requested: str  # the model name the client asked for, without @version


@dataclass(frozen=True)
class _AliasView:
    alias: Alias | None
    previous: str | None  # the version the alias pointed at before (head of its history)


class TtlCache:
    """Values fetched at most once per `ttl_s` per key; concurrent misses share one fetch.

    When a refresh fails with a Redis error, the last value is served (stale beats failing
    while Redis blips); with no value yet the error propagates.
    """

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic, max_entries: int = 10_000):
        self.ttl_s = ttl_s
        self.clock = clock
        self.max_entries = max_entries  # clients choose the keys (model names): keep them bounded
        self._values: dict[Any, tuple[float, Any]] = {}
        self._pending: dict[Any, asyncio.Future] = {}

    async def get(self, key, fetch: Callable[[], Awaitable[Any]]):
        hit = self._values.get(key)
        if hit is not None and hit[0] > self.clock():
            return hit[1]
        task = self._pending.get(key)
        if task is None:
            task = self._pending[key] = asyncio.ensure_future(fetch())
            task.add_done_callback(lambda _: self._pending.pop(key, None))
        try:
            value = await asyncio.shield(task)
        except RedisError:
            if hit is not None:
                return hit[1]
            raise
        if len(self._values) >= self.max_entries:
            self._values.clear()
        self._values[key] = (self.clock() + self.ttl_s, value)
        return value


class ModelRouter:
    """Resolves a requested model to a `Route`; see the module docstring."""

    def __init__(self, catalog: ModelCatalog, redis, settings: GatewaySettings):
        self.catalog = catalog
        self._static = frozenset(catalog.names())
        self.redis = redis
        self.registry = ModelRegistry(redis)
        self.sticky_by = settings.split_sticky_by
        self.fallback = settings.registry_fallback
        self._aliases = TtlCache(settings.registry_cache_s)
        self._live = TtlCache(settings.registry_cache_s)
        self._versions: dict[tuple[str, str], ModelVersion] = {}  # versions never change
        self._loaded: dict[str, asyncio.Future] = {}  # weights path -> ModelProfile

    async def route(self, requested: str, tenant: str, request_id: str) -> Route:
        if requested in self._static:
            return Route(self.catalog.get(requested), requested)
        try:
            name, target = parse_ref(requested)
        except InvalidArgument:
            raise ModelNotFound(
                f"model {echo(requested)} is not served here; ListModels shows the models"
            ) from None
        try:
            if target[:1] == "v" and target[1:].isdigit():
                version = target  # an explicit version: no split, no fallback
            else:
                version = await self._pick(name, target, tenant if self.sticky_by == "tenant" else request_id)
            model = await self.model_profile(name, version)
        except RedisError as e:
            raise Unavailable(f"model registry unreachable: {type(e).__name__}", retry_after_s=1.0) from e
        return Route(model, name)

    async def model_profile(self, name: str, version: str) -> ModelProfile:
        """`name@version` with its tokenizer and context length (loaded once per weights path)."""
        found = await self._version(name, version)
        return dataclasses.replace(await self._load(found), name=found.ref)

    async def _pick(self, name: str, alias_name: str, key: str) -> str:
        view = await self._aliases.get((name, alias_name), lambda: self._fetch_alias(name, alias_name))
        if view.alias is None:
            raise ModelNotFound(f"model {echo(name)} is not served here, or has no alias {echo(alias_name)}")
        chosen = choose_version(name, view.alias, key)
        if not self.fallback:
            return chosen
        live = await self._live.get("", self._fetch_live)
        for candidate in (chosen, view.alias.version, view.previous):
            if candidate and f"{name}@{candidate}" in live:
                return candidate
        return chosen  # nothing is served yet: queue on the routed version until its deadline

    async def _fetch_alias(self, name: str, alias_name: str) -> _AliasView:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hget(keys.model_aliases_key(name), alias_name)
            pipe.lindex(keys.model_history_key(name, alias_name), 0)
            raw, previous = await pipe.execute()
        alias = None if raw is None else Alias.from_json(alias_name, raw)
        return _AliasView(alias, previous.decode() if isinstance(previous, bytes) else previous)

    async def _fetch_live(self) -> frozenset[str]:
        live, _ = await registry_snapshot(self.redis)
        return frozenset(m for w in live if not w.draining for m in w.models)

    async def _version(self, name: str, version: str) -> ModelVersion:
        found = self._versions.get((name, version))
        if found is None:
            found = self._versions[(name, version)] = await self.registry.get(name, version)
        return found

    async def _load(self, version: ModelVersion) -> ModelProfile:
        task = self._loaded.get(version.path)
        if task is None or (task.done() and task.exception() is not None):
            load = asyncio.to_thread(load_model_profile, version.ref, Path(version.path), version.format)
            task = asyncio.ensure_future(load)
            self._loaded[version.path] = task
        try:
            return await asyncio.shield(task)
        except (OSError, ValueError) as e:
            raise Unavailable(f"cannot load the tokenizer of {version.ref} from {version.path}: {e}") from e
