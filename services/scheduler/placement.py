"""Which worker gets a request: the one serving the model with the most free KV.

A worker may serve several models, each from its own engine and KV pool: free KV is the
model's own (`WorkerLoad.model_load`), and reservations are kept per worker and model. The
backlog bound stays per worker: it has one stream and one intake for all its models.

Heartbeats lag, so every dispatch reserves the KV blocks it may need on that worker until a
heartbeat sent after the dispatch shows the worker's own accounting.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from llmserve.common.workers import WorkerLoad


@dataclass
class _Reservation:
    at_unix_ms: int
    blocks: int
    model: str


class Placement:
    def __init__(self, max_backlog: int):
        self.max_backlog = max_backlog
        self.workers: dict[str, WorkerLoad] = {}
        self._reserved: dict[str, list[_Reservation]] = {}

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

    def choose(self, model: str) -> WorkerLoad | None:
        """The serving worker with the most free KV whose backlog still has room."""
        candidates = [w for w in self.workers.values()
                      if model in w.models and not w.draining and self.backlog(w) < self.max_backlog]
        if not candidates:
            return None
        return max(candidates, key=lambda w: (self.free_blocks(w, model), -self.backlog(w)))

    def reserve(self, worker: WorkerLoad, need_tokens: int, model: str) -> None:
        blocks = math.ceil(need_tokens / max(worker.model_load(model).block_size, 1))
        self._reserved.setdefault(worker.worker_id, []).append(
            _Reservation(int(time.time() * 1000), blocks, model))
