"""The systems `engine_bench.py` compares, and what it measures them with."""

from __future__ import annotations

import contextlib
import copy
import statistics
import threading
import time

import psutil
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from llmserve.common.stats import quantile
from llmserve.worker.engine import w8a8
from llmserve.worker.engine.attention import AttentionMetadata, PrefillChunk
from llmserve.worker.engine.config import EngineConfig
from llmserve.worker.engine.llama import LlamaFastModel
from llmserve.worker.engine.llm_engine import LLMEngine
from llmserve.worker.engine.types import EngineRequest, SamplingParams

PPL_TEXT = (
    "The river rose slowly through the night, and by morning the low fields near the village "
    "were under a thin sheet of brown water. Farmers walked the levees with lanterns, checking "
    "for weak spots, while children watched from the church steps. Nobody in the valley could "
    "remember a spring like it: three weeks of rain after a winter of heavy snow in the "
    "mountains. The engineers from the city arrived before noon with sandbags and pumps, and "
    "by evening the worst of the danger had passed. In the years that followed, the village "
    "built a new wall along the bank and planted willows to hold the soil."
)


def latency_fields(ttfts: list[float], itls: list[float]) -> dict:
    def ms(values: list[float], q: float) -> float:
        return quantile(values, q, method="nearest", default=float("nan")) * 1e3

    return {
        "ttft_p50_ms": ms(ttfts, 0.5),
        "ttft_p99_ms": ms(ttfts, 0.99),
        "itl_p50_ms": ms(itls, 0.5),
        "itl_p99_ms": ms(itls, 0.99),
    }


class RssSampler:
    """Peak process RSS (CPU) or peak allocated GPU memory during a `measure()` block."""

    def __init__(self, device: str):
        self.device = device
        self.proc = psutil.Process()

    @contextlib.contextmanager
    def measure(self):
        box = _Peak()
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                box.rss = max(box.rss, self.proc.memory_info().rss)
                stop.wait(0.01)

        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            yield box
        finally:
            stop.set()
            thread.join()
            if self.device == "cuda":
                box.gpu = torch.cuda.max_memory_allocated()


class _Peak:
    def __init__(self):
        self.rss = 0
        self.gpu = 0

    def result(self) -> dict:
        out = {"peak_rss_mb": self.rss / 2**20}
        if self.gpu:
            out["peak_gpu_mb"] = self.gpu / 2**20
        return out


class EngineSystem:
    """LLMEngine, driven closed-loop: N requests kept in the engine until all are done."""

    def __init__(self, hf_model, tokenizer, device, dtype, threads, max_seqs):
        gpu = device == "cuda"
        cfg = EngineConfig(
            model="bench",
            device=device,
            **engine_mode(dtype),
            num_threads=None if gpu else threads,
            max_num_seqs=max_seqs,
            max_num_batched_tokens=8192 if gpu else 512,
            enable_prefix_caching=False,  # distinct prompts; keep the comparison plain
        )
        self.dtype = dtype
        self.engine = LLMEngine.from_model(cfg, hf_model, tokenizer)
        self._warm_up()

    def _warm_up(self) -> None:
        for i in range(2):
            self.engine.add_request(EngineRequest(f"warm{i}", [1, 2, 3, 4, 5], SamplingParams(max_tokens=4)))
        while self.engine.has_unfinished():
            self.engine.step()

    def run(self, prompts: list[list[int]], concurrency: int, new_tokens: int) -> tuple[dict, dict]:
        engine, params = self.engine, SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True)
        queue = list(enumerate(prompts))
        added, times, tokens, active = {}, {}, {}, set()
        totals_before = engine.timing_totals()
        start = time.perf_counter()
        while queue or active:
            while queue and len(active) < concurrency:
                i, ids = queue.pop(0)
                rid = f"r{i}"
                added[rid], times[rid], tokens[rid] = time.perf_counter(), [], []
                active.add(rid)
                engine.add_request(EngineRequest(rid, ids, params))
            outs = engine.step()
            now = time.perf_counter()
            for out in outs:
                if out.token_ids:
                    times[out.request_id].append(now)
                    tokens[out.request_id].extend(out.token_ids)
                if out.finished:
                    active.discard(out.request_id)
        wall = time.perf_counter() - start
        return self._row(concurrency, prompts, added, times, wall, totals_before), tokens

    def _row(self, concurrency, prompts, added, times, wall, totals_before) -> dict:
        ttfts = [times[r][0] - added[r] for r in added if times[r]]
        itls = [b - a for r in added for a, b in zip(times[r], times[r][1:], strict=False)]
        totals = self.engine.timing_totals()
        steps = totals.get("steps", 0) - totals_before.get("steps", 0)
        phases = {
            k: (totals.get(k, 0) - totals_before.get(k, 0)) / max(steps, 1) * 1e3
            for k in ("schedule", "prepare_inputs", "forward", "sample", "detokenize", "total")
        }
        n_tokens = sum(len(t) for t in times.values())
        return {
            "system": "llmserve_engine",
            "dtype": self.dtype,
            "concurrency": concurrency,
            "requests": len(prompts),
            "output_tokens": n_tokens,
            "wall_s": wall,
            "output_tok_s": n_tokens / wall,
            **latency_fields(ttfts, itls),
            "step_ms": {k: round(v, 3) for k, v in phases.items()},
            "preemptions": self.engine.batch_scheduler.num_preemptions,
        }

    def close(self) -> None:
        del self.engine
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the next engine sizes its KV cache from free memory


class _StepClock(LogitsProcessor):
    """Records when each generation step's logits are ready (first one ~ end of prefill)."""

    def __init__(self):
        self.times: list[float] = []

    def __call__(self, input_ids, scores):
        self.times.append(time.perf_counter())
        return scores


class HFGenerate:
    """transformers `generate`, greedy; optionally static cache + torch.compile (GPU)."""

    def __init__(self, hf_model, tokenizer, device, compiled=False):
        self.device = device
        self.model = hf_model.to(device)
        self.tokenizer = tokenizer
        self.compiled = compiled
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.model_fwd = hf_model.forward
        if compiled:
            self.model.forward = torch.compile(self.model.forward, mode="reduce-overhead", fullgraph=True)

    def _generate(self, batch: list[list[int]], new_tokens: int):
        width = max(map(len, batch))
        ids = torch.tensor([[self.pad_id] * (width - len(p)) + p for p in batch], device=self.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=self.device)
        clock = _StepClock()
        kwargs = {"cache_implementation": "static"} if self.compiled else {}
        if self.device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.inference_mode():
            self.model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=False,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                logits_processor=LogitsProcessorList([clock]),
                pad_token_id=self.pad_id,
                **kwargs,
            )
        if self.device == "cuda":
            torch.cuda.synchronize()
        return start, clock.times, time.perf_counter() - start

    def run_sequential(self, prompts, new_tokens, name) -> dict:
        self._generate(prompts[:1], 4)  # warm-up (and compilation)
        ttfts, itls, wall = [], [], 0.0
        for p in prompts:
            start, times, elapsed = self._generate([p], new_tokens)
            ttfts.append(times[0] - start)
            itls += [b - a for a, b in zip(times, times[1:], strict=False)]
            wall += elapsed
        return self._row(name + "_sequential", 1, len(prompts), len(prompts) * new_tokens, wall, ttfts, itls)

    def run_static(self, prompts, new_tokens, name) -> dict:
        self._generate(prompts, 4)  # warm-up at this batch shape
        start, times, wall = self._generate(prompts, new_tokens)
        ttfts = [times[0] - start] * len(prompts)
        itls = [b - a for a, b in zip(times, times[1:], strict=False)] * len(prompts)
        return self._row(
            name + "_static_batch", len(prompts), len(prompts), len(prompts) * new_tokens, wall, ttfts, itls
        )

    def _row(self, system, concurrency, requests, n_tokens, wall, ttfts, itls) -> dict:
        return {
            "system": system,
            "dtype": str(next(self.model.parameters()).dtype).replace("torch.", ""),
            "concurrency": concurrency,
            "requests": requests,
            "output_tokens": n_tokens,
            "wall_s": wall,
            "output_tok_s": n_tokens / wall,
            **latency_fields(ttfts, itls),
        }


def greedy_agreement(base: dict, other: dict) -> dict:
    """Exact-match rate and mean matching-prefix fraction of greedy completions."""
    same, prefix = 0, []
    for rid, ref in base.items():
        got = other.get(rid, [])
        n = next(
            (i for i, (a, b) in enumerate(zip(ref, got, strict=False)) if a != b), min(len(ref), len(got))
        )
        same += got == ref
        prefix.append(n / max(len(ref), 1))
    return {
        "requests": len(base),
        "exact_match": same / max(len(base), 1),
        "mean_prefix_match": statistics.mean(prefix),
    }


def engine_mode(name: str) -> dict:
    """EngineConfig fields for a benchmarked mode: a dtype name, or `w8a8` (fp32 activations,
    int8 weights and activations in the projections)."""
    if name in ("int4", "int8"):  # packed weight-only modes (bf16 activations)
        return {"quantization": name}
    return {"dtype": "float32", "quantization": "w8a8"} if name == "w8a8" else {"dtype": name}


def _fast_model_nll(hf_model, tokenizer, ids: list[int], mode: str, device: str) -> float:
    cfg = EngineConfig(model="x", **engine_mode(mode))
    if cfg.quantization == "w8a8":
        hf_model = copy.deepcopy(hf_model)
        w8a8.calibrate_and_smooth_(hf_model, tokenizer)
    model = LlamaFastModel(hf_model, torch.device(device), cfg.torch_dtype(), max_positions=len(ids) + 1,
                           quantization=cfg.quantization)
    n = len(ids)
    caches = model.allocate_kv_cache(n)
    dev = torch.device(device)
    positions = torch.arange(n, device=dev)
    meta = AttentionMetadata(slot_mapping=positions, prefills=[PrefillChunk(0, n, 0, None, None)])
    with torch.inference_mode():
        logits = model.forward(torch.tensor(ids, device=dev), positions, meta, caches, positions, n)
        nll = torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(ids[1:], device=dev))
    return float(nll)


def perplexity_delta(hf_model, tokenizer, dtype_name: str, device: str) -> dict:
    """Perplexity of a fixed paragraph under the engine's forward, fp32 against `dtype_name`."""
    ids = tokenizer.encode(PPL_TEXT)
    base = _fast_model_nll(hf_model, tokenizer, ids, "float32", device)
    other = _fast_model_nll(hf_model, tokenizer, ids, dtype_name, device)
    return {
        "tokens": len(ids),
        "ppl_fp32": float(torch.exp(torch.tensor(base))),
        dtype_name: float(torch.exp(torch.tensor(other))),
    }
