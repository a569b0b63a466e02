"""Which worker gets a request: one that already holds its prompt's prefix, while its load
allows (a backlog at most `affinity_backlog_slack` above the least loaded candidate, and free
KV for the request), else the one serving the model with the most free KV.

A worker holds a prefix when its heartbeat lists the prefix key (llmserve.common.
prefix_affinity) or when this scheduler placed that prefix there recently (before a
heartbeat could show it): so a burst sharing a new prefix goes to one worker from the start.

A worker may serve several models, each from its own engine and KV pool: free KV is the
model's own (`WorkerLoad.model_load`), and reservations are kept per worker and model. The
backlog bound stays per worker: it has one stream and one intake for all its models.

Heartbeats lag, so every dispatch reserves the KV blocks it may need on that worker until a
heartbeat sent after the dispatch shows the worker's own accounting.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass

from llmserve.common.workers import WorkerLoad


@dataclass
class _Reservation:
    at_unix_ms: int
    blocks: int
    model: str


_RECENT_PREFIXES = 4096  # (model, prefix) -> worker of our latest placement, bounded


class Placement:
    def __init__(self, max_backlog: int, affinity_backlog_slack: int | None = None):
        self.max_backlog = max_backlog
        self.affinity_backlog_slack = affinity_backlog_slack  # None: no prefix affinity
        self.workers: dict[str, WorkerLoad] = {}
        self._reserved: dict[str, list[_Reservation]] = {}
        self._placed: OrderedDict[tuple[str, str], str] = OrderedDict()

    def update(self, workers: list[WorkerLoad]) -> None:
        self.workers = {w.worker_id: w for w in workers}
        for worker_id in list(self._reserved):
            worker = self.workers.get(worker_id)
            if worker is None:
                del self._reserved[worker_id]
                continue
            self._reserved[worker_id] = [r for r in self._reserved[worker_id] if r.at_unix_ms > worker.sent_unix_ms]

    def forget(self, worker_id: str) -> None:
        """Place nothing more on `worker_id` until a registry read shows it alive again."""
        self.workers.pop(worker_id, None)
        self._reserved.pop(worker_id, None)

    def models(self) -> set[str]:
        return {m for w in self.workers.values() for m in w.models}

    def free_blocks(self, w: WorkerLoad, model: str) -> int:
        """Free KV blocks of `model`'s engine on `w`, less what dispatches since reserved."""
        reserved = sum(r.blocks for r in self._reserved.get(w.worker_id, ()) if r.model == model)
        return w.model_load(model).free_kv_blocks - reserved

    def backlog(self, w: WorkerLoad) -> int:
        return w.waiting + len(self._reserved.get(w.worker_id, ()))

    def has_room(self, w: WorkerLoad) -> bool:
        """Its backlog is below our bound and the worker's own intake bound (see WorkerLoad)."""
        return self.backlog(w) < min(self.max_backlog, w.max_backlog or self.max_backlog)

    def choose(self, model: str, prefix: str = "", need_tokens: int = 0) -> WorkerLoad | None:
        """A holder of `prefix` while its load allows, else the serving worker with the most
        free KV; only workers whose backlog still has room."""
        candidates = [w for w in self.workers.values()
                      if model in w.models and not w.draining and self.has_room(w)]
        if not candidates:
            return None
        by_free_kv = lambda w: (self.free_blocks(w, model), -self.backlog(w))  # noqa: E731
        if prefix and self.affinity_backlog_slack is not None:
            least = min(self.backlog(w) for w in candidates)
            holders = [w for w in candidates if self.holds(w, model, prefix)
                       and self.backlog(w) - least <= self.affinity_backlog_slack
                       and self.free_blocks(w, model) >= _blocks(w, model, need_tokens)]
            if holders:
                return max(holders, key=by_free_kv)
        return max(candidates, key=by_free_kv)

    def holds(self, w: WorkerLoad, model: str, prefix: str) -> bool:
        return self._placed.get((model, prefix)) == w.worker_id or prefix in w.model_load(model).prefix_keys

    def reserve(self, worker: WorkerLoad, need_tokens: int, model: str, prefix: str = "") -> None:
        self._reserved.setdefault(worker.worker_id, []).append(
            _Reservation(int(time.time() * 1000), _blocks(worker, model, need_tokens), model))
        if prefix:
            self._placed[(model, prefix)] = worker.worker_id
            self._placed.move_to_end((model, prefix))
            while len(self._placed) > _RECENT_PREFIXES:
                self._placed.popitem(last=False)


def _blocks(worker: WorkerLoad, model: str, tokens: int) -> int:
    return math.ceil(tokens / max(worker.model_load(model).block_size, 1))
