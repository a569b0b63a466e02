"""Engine weight formats side by side on CPU: decode speed, prefill, quality, memory.

    python bench/quant_bench.py [--threads 1 2] [--rounds 2] [--modes fp32 int4]

Modes (each the engine as the worker builds it, `LLMEngine.from_config` on the real model):
`fp32` and `bf16` (dequantized weights), `w8a8` (int8 x int8, SmoothQuant), `int8` (int8
weight-only per channel, bf16 activations) and `int4` (the GGUF's Q4_1 blocks packed for
torch's int4 kernel, bf16 activations). All engines are loaded in one process and measured
round-robin, so a burst from the machine's other jobs hits every mode alike; best of rounds.

Measured per mode and thread count: pure-decode step time at batch 1, 4 and 16 (median over
`--steps` steps; tok/s = batch / step time) and one 128-token prefill. Quality: perplexity on
bench/data/perplexity.txt (512-token windows) against fp32 on the same dequantized weights,
greedy agreement with fp32 on the 64 workload prompts (first `--agree-tokens` tokens).
Memory: in a child process per mode, the weights' bytes and RSS after loading, against the
GGUF file's size. Writes bench/results/quantization.{json,md} and prints the default rule's
pick (`choose_default`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
# The shared workload (../shared/bench/workload.py beside the checkout, as the lead's loadgen uses).
for _shared in (HERE.parent.parent / "shared" / "bench", HERE.parent.parent.parent / "shared" / "bench"):
    if (_shared / "workload.py").is_file():
        sys.path.insert(0, str(_shared))
        break

from llmserve.common.model_store import resolve_model, source_gguf  # noqa: E402
from llmserve.worker.engine.attention import AttentionMetadata, PrefillChunk  # noqa: E402
from llmserve.worker.engine.config import EngineConfig  # noqa: E402
from llmserve.worker.engine.llm_engine import LLMEngine  # noqa: E402
from llmserve.worker.engine.types import EngineRequest, SamplingParams  # noqa: E402

RESULTS = HERE / "results"
TEXT = HERE / "data" / "perplexity.txt"
MODES = {"fp32": {"dtype": "float32"}, "bf16": {"dtype": "bfloat16"},
         "w8a8": {"dtype": "float32", "quantization": "w8a8"},
         "int8": {"quantization": "int8"}, "int4": {"quantization": "int4"}}  # fmt: skip
PPL_TOLERANCE = 0.02  # the default may cost at most 2% perplexity against fp32


def build(model_dir, mode: str, **extra) -> LLMEngine:
    return LLMEngine.from_config(EngineConfig(model=model_dir, enable_prefix_caching=False, **MODES[mode], **extra))


def _prompts(tokenizer, n: int) -> list[list[int]]:
    from prompts import chat_prompts, chat_token_ids

    try:
        from workload import build_prompts
    except ImportError:  # no shared folder beside the checkout: the repo's own seeded prompts
        build_prompts = chat_prompts
    return chat_token_ids(tokenizer, build_prompts(n))


def decode_step_ms(engine: LLMEngine, prompts: list[list[int]], batch: int, steps: int) -> float:
    """Median wall time of a pure-decode step with `batch` sequences."""
    params = SamplingParams(max_tokens=steps + 2, temperature=0.0, ignore_eos=True)
    for i in range(batch):
        engine.add_request(EngineRequest(f"d{batch}-{i}-{time.monotonic_ns()}", prompts[i % len(prompts)], params))
    started: set[str] = set()
    while len(started) < batch:  # prefills (chunked into as many steps as the budget needs)
        started.update(o.request_id for o in engine.step() if o.token_ids)
    times = []
    while engine.has_unfinished():
        t = time.perf_counter()
        outs = engine.step()
        if sum(1 for o in outs if o.token_ids) == batch:
            times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def prefill_ms(engine: LLMEngine, prompt: list[int]) -> float:
    engine.add_request(EngineRequest(f"p-{time.monotonic_ns()}", prompt, SamplingParams(max_tokens=1)))
    t = time.perf_counter()
    while engine.has_unfinished():
        engine.step()
    return 1000 * (time.perf_counter() - t)


def perplexity(engine: LLMEngine, ids: list[int], window: int = 512) -> float:
    model = engine.runner.model
    total, count = 0.0, 0
    for start in range(0, len(ids) - 1, window):
        chunk = ids[start : start + window]
        if len(chunk) < 2:
            break
        n = len(chunk)
        pos = torch.arange(n)
        meta = AttentionMetadata(slot_mapping=pos, prefills=[PrefillChunk(0, n, 0, None, None)])
        with torch.inference_mode():
            logits = model.forward(torch.tensor(chunk), pos, meta, model.allocate_kv_cache(n), pos, n)
        nll = torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(chunk[1:]), reduction="sum")
        total, count = total + float(nll), count + n - 1
    return math.exp(total / count)


def greedy(engine: LLMEngine, prompts: list[list[int]], tokens: int, concurrency: int = 16) -> list[list[int]]:
    params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)
    out: dict[str, list[int]] = {}
    queue, active = list(enumerate(prompts)), set()
    while queue or active:
        while queue and len(active) < concurrency:
            i, ids = queue.pop(0)
            out[f"g{i}"] = []
            active.add(f"g{i}")
            engine.add_request(EngineRequest(f"g{i}", ids, params))
        for o in engine.step():
            out[o.request_id].extend(o.token_ids)
            if o.finished:
                active.discard(o.request_id)
    return [out[f"g{i}"] for i in range(len(prompts))]


def agreement(base: list[list[int]], other: list[list[int]]) -> dict:
    prefix = []
    for a, b in zip(base, other, strict=True):
        n = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        prefix.append(n / max(len(a), 1))
    return {"exact_match": sum(p == 1.0 for p in prefix) / len(prefix), "mean_prefix_match": statistics.mean(prefix)}


def memory_child(model_dir: str, mode: str) -> dict:
    """Run in a fresh process: RSS after loading one mode (minus the process before), weights' bytes."""
    import ctypes
    import gc

    import psutil

    from llmserve.worker.model_loading import engine_memory_bytes

    proc = psutil.Process()
    gc.collect()
    before = proc.memory_info().rss
    engine = build(model_dir, mode, num_kv_blocks=4)
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    runner = engine.runner
    kv = sum(k.nbytes + v.nbytes for k, v in runner.kv_caches)
    return {"weights_mib": (engine_memory_bytes(engine) - kv) / 2**20,
            "rss_delta_mib": (proc.memory_info().rss - before) / 2**20,
            "peak_rss_mib": proc.memory_info().rss / 2**20}  # fmt: skip


def machine() -> dict:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if ln.startswith("Model name")), "?")
    flags = next((ln.split(":", 1)[1].split() for ln in lscpu.splitlines() if ln.startswith("Flags")), [])
    return {"cpu": model, "cores": os.cpu_count(), "isa_flags": [f for f in flags if f.startswith(("avx", "amx"))],
            "torch": torch.__version__, "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "platform": platform.platform(), "load_average": os.getloadavg()}  # fmt: skip


def choose_default(report: dict) -> dict:
    """The fastest mode (batch-1 decode, best thread count) within 2% perplexity of fp32."""
    base = report["quality"]["fp32"]["perplexity"]
    ok = [m for m, q in report["quality"].items() if q["perplexity"] <= base * (1 + PPL_TOLERANCE)]
    best = max(((m, t) for m in ok for t in report["speed"][m]),
               key=lambda mt: report["speed"][mt[0]][mt[1]]["decode_tok_s"]["1"])  # fmt: skip
    return {"mode": best[0], "threads": int(best[1]), "eligible": ok}


def run(args) -> dict:
    model_dir = resolve_model(args.model)
    gguf = source_gguf(model_dir)
    engines = {m: build(model_dir, m) for m in args.modes}
    tokenizer = engines[args.modes[0]].tokenizer
    prompts = _prompts(tokenizer, 64)
    from prompts import fixed_length_prompts

    long_prompt = fixed_length_prompts(tokenizer, 1, 128)[0]
    speed: dict = {m: {str(t): {"decode_ms": {}, "prefill128_ms": []} for t in args.threads} for m in args.modes}
    for _ in range(args.rounds):  # round-robin: every mode sees the same background load
        for threads in args.threads:
            torch.set_num_threads(threads)
            for mode, engine in engines.items():
                cell = speed[mode][str(threads)]
                for b in args.batches:
                    cell["decode_ms"].setdefault(str(b), []).append(decode_step_ms(engine, prompts, b, args.steps))
                cell["prefill128_ms"].append(prefill_ms(engine, long_prompt))
                print(mode, threads, {b: round(v[-1], 1) for b, v in cell["decode_ms"].items()}, flush=True)
    for cells in speed.values():
        for cell in cells.values():
            cell["decode_ms"] = {b: min(v) for b, v in cell["decode_ms"].items()}
            cell["decode_tok_s"] = {b: int(b) * 1000 / v for b, v in cell["decode_ms"].items()}
            cell["prefill128_ms"] = min(cell["prefill128_ms"])
    from llmserve.worker.engine import threads as thread_rule

    # What the engine's start-up rule (num_threads="auto") measures, per mode: ms per decode pass.
    calibration = {m: {str(n): 1000 * t for n, t in thread_rule.measure(e.runner.model, repeats=7).items()}
                   for m, e in engines.items()}  # fmt: skip
    print("thread calibration", calibration, flush=True)
    torch.set_num_threads(max(args.threads))
    ids = tokenizer.encode(TEXT.read_text())
    base_text = greedy(engines["fp32"], prompts, args.agree_tokens)
    quality = {}
    for mode, engine in engines.items():
        quality[mode] = {"perplexity": perplexity(engine, ids)}
        if mode != "fp32":
            quality[mode]["greedy_vs_fp32"] = agreement(base_text, greedy(engine, prompts, args.agree_tokens))
        print(mode, quality[mode], flush=True)
    memory = {m: json.loads(subprocess.run([sys.executable, __file__, "--memory-child", m, "--model", args.model],
                                           capture_output=True, text=True, check=True).stdout.splitlines()[-1])
              for m in args.modes}  # fmt: skip
    report = {"machine": machine(), "args": {k: v for k, v in vars(args).items() if k not in ("memory_child", "out")},
              "gguf": {"file": gguf.name if gguf else None, "mib": gguf.stat().st_size / 2**20 if gguf else None},
              "perplexity_tokens": len(ids), "speed": speed, "thread_calibration_ms": calibration, "quality": quality, "memory": memory}  # fmt: skip
    report["default"] = choose_default(report)
    return report


def write_markdown(report: dict, path: Path) -> None:
    mach, a = report["machine"], report["args"]
    base = report["quality"]["fp32"]["perplexity"]
    lines = [
        "# Engine weight formats on CPU (engine alone)", "",
        f"Machine: {mach['cpu']}, {mach['cores']} cores, {' '.join(mach['isa_flags'])}; torch {mach['torch']} "
        f"({mach['torch_cpu_capability']}); load average at the end {[round(x, 2) for x in mach['load_average']]} "
        "(the box is shared with other jobs: ratios in one run matter more than absolute numbers).", "",
        f"Produced by `bench/quant_bench.py` ({a['rounds']} rounds round-robin, best of rounds; pure-decode step "
        f"median over {a['steps']} steps; prefill: one 128-token prompt). GGUF: `{report['gguf']['file']}` "
        f"({report['gguf']['mib']:.1f} MiB). Perplexity on `bench/data/perplexity.txt` "
        f"({report['perplexity_tokens']} tokens, 512-token windows); greedy agreement with fp32 on the 64 workload "
        f"prompts, first {a['agree_tokens']} tokens.", "",
        "| mode | threads | " + " | ".join(f"decode b={b} tok/s" for b in a["batches"])
        + " | prefill 128 ms | perplexity | Δ vs fp32 | greedy exact | greedy prefix | weights MiB | RSS MiB |",
        "|---|---:|" + "---:|" * (len(a["batches"]) + 7),
    ]  # fmt: skip
    for mode, cells in report["speed"].items():
        q, mem = report["quality"][mode], report["memory"][mode]
        agree = q.get("greedy_vs_fp32", {"exact_match": 1.0, "mean_prefix_match": 1.0})
        for threads, cell in cells.items():
            tok = " | ".join(f"{cell['decode_tok_s'][str(b)]:.1f}" for b in a["batches"])
            lines.append(f"| {mode} | {threads} | {tok} | {cell['prefill128_ms']:.0f} | {q['perplexity']:.3f} | "
                         f"{100 * (q['perplexity'] / base - 1):+.2f}% | {agree['exact_match']:.2f} | "
                         f"{agree['mean_prefix_match']:.2f} | {mem['weights_mib']:.1f} | {mem['rss_delta_mib']:.0f} |")
    cal = report["thread_calibration_ms"]
    lines += ["", "Thread rule (`engine/threads.py`, what `num_threads` unset does at start): ms per decode-token "
              "pass of every projection, median of 7, at each thread count:", "",
              "| mode | " + " | ".join(f"{n} thread(s)" for n in next(iter(cal.values()))) + " |",
              "|---|" + "---:|" * len(next(iter(cal.values())))]
    lines += [f"| {m} | " + " | ".join(f"{v:.1f}" for v in c.values()) + " |" for m, c in cal.items()]
    d = report["default"]
    lines += ["", f"Default chosen by the rule (fastest batch-1 decode within {PPL_TOLERANCE:.0%} perplexity of "
              f"fp32): **{d['mode']}** at {d['threads']} thread(s); eligible: {', '.join(d['eligible'])}.", ""]
    path.write_text("\n".join(lines))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="SmolLM2-135M-Instruct")
    p.add_argument("--modes", nargs="*", default=list(MODES))
    p.add_argument("--threads", type=int, nargs="*", default=sorted({1, os.cpu_count() or 1}))
    p.add_argument("--batches", type=int, nargs="*", default=[1, 4, 16])
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--agree-tokens", type=int, default=16)
    p.add_argument("--memory-child", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=RESULTS / "quantization")
    args = p.parse_args()
    if args.memory_child:
        print(json.dumps(memory_child(str(resolve_model(args.model)), args.memory_child)))
        return 0
    report = run(args)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str))
    write_markdown(report, args.out.with_suffix(".md"))
    print(args.out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
