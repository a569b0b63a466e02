"""The models a worker holds: served id -> engine and its step thread, within a memory budget.

Each model has its own engine (own KV pool, own batch) stepped by its own `EngineThread`,
so a slow or unloading model never holds up another's steps. A model being unloaded stays
in the map until its last request ends, but is no longer `serving`: it is not advertised in
heartbeats and new work for it is handed back to the queue.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llmserve.common.errors import ModelNotFound, ResourceExhausted, Unavailable
from llmserve.common.prefix_affinity import RecentPrefixes
from llmserve.common.workers import ModelLoad

from .engine.interface import Engine
from .engine_thread import EngineThread
from .step_rates import StepRates


@dataclass
class ServedModel:
    """One loaded model."""

    served_id: str
    engine: Engine
    memory_bytes: int  # measured after loading: weights plus KV cache
    ref: str = ""  # the reference it was loaded from
    thread: EngineThread | None = None
    serving: bool = True  # False from the moment an unload starts
    rates: StepRates = field(default_factory=StepRates)  # measured on the engine thread
    prefixes: RecentPrefixes = field(default_factory=RecentPrefixes)  # of the prompts started here

    def load(self) -> ModelLoad:
        s = self.engine.stats()
        return ModelLoad(s.total_kv_blocks, s.free_kv_blocks, s.block_size, s.running, s.waiting,
                         self.memory_bytes, prefill_tokens_per_s=round(self.rates.prefill_tokens_per_s, 1),
                         decode_tokens_per_s=round(self.rates.decode_capacity(s.max_running), 1),
                         mean_completion_tokens=round(self.rates.mean_completion_tokens, 1),
                         prefix_keys=self.prefixes.keys(), prompt_tokens=self.rates.prompt_tokens,
                         prefix_hit_tokens=self.rates.prefix_hit_tokens)


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB"


class ModelSet:
    """Served id -> `ServedModel`, and the memory budget every load is checked against.

    A load first reserves its estimate (so concurrent loads cannot both fit in the same
    room), then `add` checks the measured size. Called from the event loop only.
    """

    def __init__(self, budget_bytes: int):
        self.budget_bytes = budget_bytes
        self._models: dict[str, ServedModel] = {}
        self._loading: dict[str, int] = {}  # served id -> estimate, while it loads

    def serving(self, served_id: str) -> ServedModel | None:
        """The model if it takes new work here."""
        model = self._models.get(served_id)
        return model if model is not None and model.serving else None

    def find(self, served_id: str) -> ServedModel | None:
        """The model, serving or unloading."""
        return self._models.get(served_id)

    def all(self) -> list[ServedModel]:
        return list(self._models.values())

    def serving_ids(self) -> list[str]:
        return sorted(m.served_id for m in self._models.values() if m.serving)

    def used_bytes(self) -> int:
        """Loaded models plus the estimates of loads in progress."""
        return sum(m.memory_bytes for m in self._models.values()) + sum(self._loading.values())

    def loading_ids(self) -> list[str]:
        return sorted(self._loading)

    def reserve(self, served_id: str, estimate: int) -> None:
        """Claim room for a load about to start; refuse it if the budget has none."""
        if served_id in self._loading:
            raise Unavailable(f"{served_id} is already being loaded here", retry_after_s=1.0)
        if served_id in self._models:
            raise Unavailable(f"{served_id} is being unloaded here; load it again once it is gone",
                              retry_after_s=1.0)
        self._check(served_id, estimate, "needs about")
        self._loading[served_id] = estimate

    def cancel_reservation(self, served_id: str) -> None:
        self._loading.pop(served_id, None)

    def add(self, model: ServedModel) -> None:
        """Admit a loaded model, checking its measured size (the caller frees it on refusal)."""
        self._check(model.served_id, model.memory_bytes, "takes")
        self._loading.pop(model.served_id, None)
        self._models[model.served_id] = model

    def begin_unload(self, served_id: str) -> ServedModel:
        """Stop taking new work for the model; it stays until `remove`."""
        model = self._models.get(served_id)
        if model is None:
            raise ModelNotFound(f"model {served_id!r} is not loaded on this worker")
        model.serving = False
        return model

    def remove(self, served_id: str) -> ServedModel:
        """Forget the model and stop its thread; its memory goes once nothing refers to it."""
        model = self._models.pop(served_id)
        if model.thread is not None:
            model.thread.stop()
            model.thread = None
        return model

    def _check(self, served_id: str, need: int, verb: str) -> None:
        used = self.used_bytes() - self._loading.get(served_id, 0)
        if used + need > self.budget_bytes:
            raise ResourceExhausted(
                f"loading {served_id} would exceed this worker's model memory budget: it {verb} "
                f"{_gib(need)}, {_gib(used)} of {_gib(self.budget_bytes)} is in use; unload a model "
                f"first or raise LLMSERVE_WORKER_MODEL_MEMORY_BYTES"
            )
