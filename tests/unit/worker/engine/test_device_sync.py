"""GPU hygiene, checked on the CPU: a step reads the sampled ids back once and syncs nowhere else.

On a GPU every device->host read (`.tolist()`, `.item()`, `.cpu()`, `int(t)`, ...) and every
`torch.cuda.synchronize()` stalls the host until the queued kernels finish, so a step that
does more than one of them cannot overlap its Python work with the device's. The engine here
runs a tiny Llama on the CPU while believing its device is CUDA (the only thing it decides
from the device is how it times and traces steps), with every such call counted.
"""

from __future__ import annotations

import contextlib
from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import AutoModelForCausalLM, LlamaConfig

from llmserve.worker.engine.config import EngineConfig
from llmserve.worker.engine.llm_engine import LLMEngine
from llmserve.worker.engine.loader import load_engine_parts
from llmserve.worker.engine.sampler import Sampler
from llmserve.worker.engine.types import EngineRequest, SamplingParams

# Tensor methods that copy device data to the host (each one a sync on CUDA).
_READS = ("tolist", "item", "cpu", "numpy", "__int__", "__float__", "__bool__", "__index__")
# Ops whose output size depends on the data: the host must wait for the device.
_DATA_DEPENDENT = {"aten._local_scalar_dense.default", "aten.nonzero.default", "aten.unique2.default",
                   "aten.masked_select.default"}


class _Ops(TorchDispatchMode):
    def __init__(self, counts: Counter):
        super().__init__()
        self.counts = counts

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func) in _DATA_DEPENDENT:
            self.counts[str(func)] += 1
        return func(*args, **(kwargs or {}))


class SyncCounter:
    """Counts host reads of tensors, data-dependent ops and `torch.cuda.synchronize` calls.

    Reads inside the sampler are folded into one per sampler call (its internals are the
    sampler's own business); everything else the step does is counted as is."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fold_sampler: bool = True):
        self.counts: Counter = Counter()
        self._fold = fold_sampler
        self._depth = 0  # > 0 while inside the sampler
        for name in _READS:
            monkeypatch.setattr(torch.Tensor, name, self._wrap(name, getattr(torch.Tensor, name)))
        monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: self._count("cuda.synchronize"))
        sample = Sampler.sample  # the engine calls `sample` (ids and logprobs in one readback)

        def counted_sample(sampler, *args, **kwargs):
            self._count("sampler call")
            self._depth += 1
            try:
                return sample(sampler, *args, **kwargs)
            finally:
                self._depth -= 1

        monkeypatch.setattr(Sampler, "sample", counted_sample)

    def _count(self, what: str) -> None:
        if self._depth == 0 or not self._fold:
            self.counts[what] += 1

    def _wrap(self, name, method):
        def wrapped(tensor, *args, **kwargs):
            self._count(f"Tensor.{name}")
            return method(tensor, *args, **kwargs)

        return wrapped

    @contextlib.contextmanager
    def step(self):
        """Count within one engine step; the counts are fresh for each step."""
        self.counts.clear()
        with _Ops(self.counts):
            yield self.counts


def _tiny_llama():
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=256, vocab_size=512,
                      eos_token_id=None, bos_token_id=None, pad_token_id=None)
    return AutoModelForCausalLM.from_config(cfg).eval()


def _cuda_minded_engine(tokenizer, monkeypatch) -> LLMEngine:
    """A CPU engine whose config says CUDA from construction on (weights stay on the CPU)."""
    config = EngineConfig(model="unused", block_size=4)
    parts = load_engine_parts(config, hf_model=_tiny_llama(), tokenizer=tokenizer)
    monkeypatch.setattr(EngineConfig, "torch_device", lambda self: torch.device("cuda"))
    return LLMEngine(config, parts)


def _request(i: int, temperature: float) -> EngineRequest:
    params = SamplingParams(max_tokens=12, temperature=temperature, ignore_eos=True, seed=i)
    return EngineRequest(request_id=f"r{i}", prompt_token_ids=[(7 * i + j) % 500 + 1 for j in range(5 + i)],
                         sampling=params)


def _per_step_counts(engine: LLMEngine, counter: SyncCounter, temperatures) -> list[Counter]:
    for i, t in enumerate(temperatures):
        engine.add_request(_request(i, t))
    steps = []
    while engine.has_unfinished():
        with counter.step() as counts:
            engine.step()
        steps.append(Counter(counts))
    return steps


@pytest.mark.parametrize("temperatures", [[0.0], [0.0] * 4, [0.0, 0.8, 0.0, 1.0]],
                         ids=["greedy-1", "greedy-4", "mixed-4"])
def test_a_step_calls_the_sampler_once_and_never_synchronizes(tokenizer, monkeypatch, temperatures):
    """Around the sampler (one call per step: its readback) the step reads nothing back."""
    engine = _cuda_minded_engine(tokenizer, monkeypatch)
    counter = SyncCounter(monkeypatch)
    steps = _per_step_counts(engine, counter, temperatures)
    assert len(steps) >= 12  # the prefill and every decode step were counted
    for i, counts in enumerate(steps):
        assert counts == Counter({"sampler call": 1}), (i, counts)


def test_a_greedy_step_reads_the_device_exactly_once(tokenizer, monkeypatch):
    """Counting inside the sampler too: a greedy step's only device read is its ids' `tolist`."""
    engine = _cuda_minded_engine(tokenizer, monkeypatch)
    counter = SyncCounter(monkeypatch, fold_sampler=False)
    steps = _per_step_counts(engine, counter, [0.0] * 4)
    assert len(steps) >= 12
    for i, counts in enumerate(steps):
        assert counts == Counter({"sampler call": 1, "Tensor.tolist": 1}), (i, counts)
