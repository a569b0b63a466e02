"""What ListModels (gRPC) and `/v1/models` (HTTP) show: the static catalog and the registry.

Catalog names come with their context length and the live workers that have them loaded.
Registry models come with their aliases (version and split) and, for each served id
`name@vN` that an alias routes to or a live worker holds, those workers (one heartbeat
snapshot serves the whole listing). A registry name that is also a catalog name is not
listed twice: the bare name routes to the catalog.

A Redis outage never fails the listing: workers are then unknown (none listed, as for the
catalog), and registry models are shown as last read.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from redis.exceptions import RedisError

from llmserve.common.errors import LLMServeError
from llmserve.common.models.registry import ACTIVE, Alias
from llmserve.common.workers import WorkerLoad, registry_snapshot

from .catalog import ModelCatalog
from .router import ModelRouter


@dataclass
class AliasStatus:
    alias: str
    version: str
    split: dict[str, float] = field(default_factory=dict)  # version -> percent of the alias's traffic


@dataclass
class VersionStatus:
    served_id: str  # name@vN
    ready_workers: int
    worker_ids: list[str] = field(default_factory=list)  # live workers that have it loaded


@dataclass
class ModelStatus:
    name: str
    context_length: int
    ready_workers: int
    worker_ids: list[str] = field(default_factory=list)  # live workers that have it loaded
    registry: bool = False
    aliases: list[AliasStatus] = field(default_factory=list)
    versions: list[VersionStatus] = field(default_factory=list)


def _holders(live: list[WorkerLoad], served_id: str) -> tuple[int, list[str]]:
    """(workers serving it, not draining; ids of all live workers that have it loaded)."""
    holders = [w for w in live if served_id in w.models]
    return sum(1 for w in holders if not w.draining), sorted(w.worker_id for w in holders)


def _version_number(served_id: str) -> int:
    version = served_id.rpartition("@")[2]
    return int(version[1:]) if version[1:].isdigit() else 0


class ModelLister:
    """Builds the listing; keeps the registry part as last read, for Redis outages."""

    def __init__(self, catalog: ModelCatalog, router: ModelRouter, redis):
        self.catalog = catalog
        self.router = router
        self.redis = redis
        self._last_registry: list[ModelStatus] = []

    async def listing(self) -> list[ModelStatus]:
        try:
            live: list[WorkerLoad] | None = (await registry_snapshot(self.redis))[0]
        except RedisError:
            live = None
        out = [self._catalog_model(name, live or []) for name in self.catalog.names()]
        out += await self._registry_models(live)
        return sorted(out, key=lambda m: m.name)

    def _catalog_model(self, name: str, live: list[WorkerLoad]) -> ModelStatus:
        ready, worker_ids = _holders(live, name)
        return ModelStatus(name, self.catalog.get(name).context_length, ready, worker_ids)

    async def _registry_models(self, live: list[WorkerLoad] | None) -> list[ModelStatus]:
        try:
            if live is None:
                raise RedisError("worker heartbeats unreadable")
            registered = await self.router.registry.all_aliases()
        except RedisError:
            return [_without_workers(m) for m in self._last_registry]
        static = set(self.catalog.names())
        models = [await self._registry_model(name, aliases, live)
                  for name, aliases in registered.items() if name not in static]  # fmt: skip
        self._last_registry = models
        return models

    async def _registry_model(self, name: str, aliases: dict[str, Alias], live: list[WorkerLoad]) -> ModelStatus:
        served = {f"{name}@{v}" for a in aliases.values() for v in (a.version, *a.split)}
        served |= {m for w in live for m in w.models if m.startswith(f"{name}@")}
        versions = [VersionStatus(sid, *_holders(live, sid)) for sid in sorted(served, key=_version_number)]
        holders = [w for w in live if any(m.startswith(f"{name}@") for m in w.models)]
        active = aliases.get(ACTIVE)
        return ModelStatus(
            name=name,
            context_length=await self._context_length(name, active.version) if active else 0,
            ready_workers=sum(1 for w in holders if not w.draining),
            worker_ids=sorted(w.worker_id for w in holders),
            registry=True,
            aliases=[AliasStatus(a.name, a.version, dict(a.split)) for a in aliases.values()],
            versions=versions,
        )

    async def _context_length(self, name: str, version: str) -> int:
        """From the version's config, loaded (and cached) as routing loads it; 0 if unreadable."""
        try:
            return (await self.router.model_profile(name, version)).context_length
        except (LLMServeError, RedisError):
            return 0


def _without_workers(model: ModelStatus) -> ModelStatus:
    versions = [VersionStatus(v.served_id, 0) for v in model.versions]
    return dataclasses.replace(model, ready_workers=0, worker_ids=[], versions=versions)

