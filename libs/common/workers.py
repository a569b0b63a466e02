"""The worker registry: heartbeats with a TTL, read by schedulers and gateways."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields

import redis.asyncio as aioredis

from . import redis_keys as keys


@dataclass
class ModelLoad:
    """One served model's engine on a worker: each model has its own KV pool."""

    total_kv_blocks: int = 0
    free_kv_blocks: int = 0
    block_size: int = 16
    running: int = 0
    waiting: int = 0
    memory_bytes: int = 0  # weights plus KV cache, as measured after loading
    # Measured over recent engine steps (0: not measured yet): what schedulers estimate waits from.
    prefill_tokens_per_s: float = 0.0  # prompt tokens computed per second of step time
    decode_tokens_per_s: float = 0.0  # decode capacity: tokens a second a full batch makes
    mean_completion_tokens: float = 0.0  # of recently finished requests
    prefix_keys: list[str] = field(default_factory=list)  # recently run prompt prefixes (prefix_affinity.py)
    # Since the engine started (0 for an engine that does not say): prompt tokens admitted, and
    # those of them served from the prefix cache instead of computed.
    prompt_tokens: int = 0
    prefix_hit_tokens: int = 0

    @property
    def prefix_hit_rate(self) -> float | None:
        """Prefix-cache hits over prompt tokens; None before any prompt."""
        return self.prefix_hit_tokens / self.prompt_tokens if self.prompt_tokens else None


@dataclass
class WorkerLoad:
    """What a worker reports in each heartbeat.

    The top-level KV and queue numbers are sums over the worker's models; `model_loads` has
    them per served model id (placement must compare a model's own free KV, since a request
    can only use the pool of the engine that serves its model). Heartbeats from workers
    without `model_loads` (one model) are read with the totals standing for that model.
    """

    worker_id: str
    address: str  # gRPC address of its WorkerService
    models: list[str] = field(default_factory=list)
    total_kv_blocks: int = 0
    free_kv_blocks: int = 0
    block_size: int = 16
    running: int = 0
    waiting: int = 0  # in the engine and in its stream, not yet running
    draining: bool = False
    sent_unix_ms: int = 0
    # Requests its intake takes from its stream ahead of running them (0: not said). Schedulers
    # place no more than this ahead on it, so its whole backlog is in the engines' waiting
    # queues, which go by priority: nothing high waits in the stream behind something low.
    max_backlog: int = 0
    model_loads: dict[str, ModelLoad] = field(default_factory=dict)

    def model_load(self, model: str) -> ModelLoad:
        """The load of one served model (the worker totals for a one-model heartbeat)."""
        load = self.model_loads.get(model)
        if load is not None:
            return load
        return ModelLoad(self.total_kv_blocks, self.free_kv_blocks, self.block_size, self.running, self.waiting)

    @classmethod
    def from_json(cls, raw: str | bytes) -> WorkerLoad:
        data = json.loads(raw)
        loads = {m: _known(ModelLoad, v) for m, v in (data.pop("model_loads", None) or {}).items()}
        data.pop("model_loads", None)
        return _known(cls, {**data, "model_loads": loads})


def _known(cls, data: dict):
    """`cls(**data)` without fields this version does not know (a newer worker's heartbeat)."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


async def publish_heartbeat(r: aioredis.Redis, load: WorkerLoad, ttl_ms: int) -> None:
    load.sent_unix_ms = int(time.time() * 1000)
    pipe = r.pipeline(transaction=True)
    pipe.sadd(keys.WORKERS_SET, load.worker_id)
    pipe.set(keys.heartbeat_key(load.worker_id), json.dumps(asdict(load)), px=ttl_ms)
    await pipe.execute()


async def withdraw(r: aioredis.Redis, worker_id: str) -> None:
    """Deregister on clean shutdown so nobody waits for its heartbeat to expire."""
    pipe = r.pipeline(transaction=True)
    pipe.srem(keys.WORKERS_SET, worker_id)
    pipe.delete(keys.heartbeat_key(worker_id))
    await pipe.execute()


async def expire_heartbeat(r: aioredis.Redis, worker_id: str) -> None:
    """End the heartbeat but keep the registration: schedulers see a dead worker at once and
    recover the work in its stream (a worker going down on a fatal failure)."""
    await r.delete(keys.heartbeat_key(worker_id))


async def registry_snapshot(r: aioredis.Redis) -> tuple[list[WorkerLoad], list[str]]:
    """(live workers, ids of registered workers whose heartbeat expired)."""
    ids = sorted(x.decode() if isinstance(x, bytes) else x for x in await r.smembers(keys.WORKERS_SET))
    if not ids:
        return [], []
    beats = await r.mget([keys.heartbeat_key(i) for i in ids])
    live, dead = [], []
    for worker_id, beat in zip(ids, beats, strict=True):
        if beat is None:
            dead.append(worker_id)
        else:
            live.append(WorkerLoad.from_json(beat))
    return live, dead
