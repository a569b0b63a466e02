"""fp32 vs int8 dynamic vs bf16 on CPU with the real model: memory, decode speed, perplexity.

    python bench/quant_bench.py [--model DIR] [--tokens 32] [--threads 1]

Variants: `fp32`; `int8` (what `llmserve models quantize --mode int8` writes: per-channel int8
weights, every Linear but the MLP down_proj); `int8-all` (the textbook call: every Linear,
per-tensor); `bf16`.

Threads default to 1: on this 2-core machine shared with other jobs, 2 intra-op threads made
fp32 decoding ~20x slower (0.5 vs 11.6 tok/s), each small matmul waiting ~8 ms at an OpenMP
barrier for a descheduled thread, which would measure the neighbours rather than the model.

Each variant runs in its own process so its RSS is its own. Measured per variant:
- weights: bytes held by parameters and packed int8 weights (exact);
- RSS after loading (glibc's free lists trimmed first, so memory freed while quantizing
  does not count) and peak RSS (which does include the fp32 copy int8 is made from);
- greedy decode tok/s at batch 1: a plain transformers forward loop with its KV cache, best
  of `--repeats` runs (the machine is shared; best-of filters other people's bursts);
- perplexity on bench/data/perplexity.txt (fixed text, ~2.7k tokens, 512-token windows).
Writes bench/results/quantization.json and .md.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TEXT = HERE / "data" / "perplexity.txt"
RESULTS = HERE / "results"
VARIANTS = ("fp32", "int8", "int8-all", "bf16", "w8a8")
PROMPT = "Write a short story about a lighthouse keeper who"


def _rss_mb() -> tuple[float, float]:
    """(RSS, private RSS) in MiB. transformers mmaps safetensors, so part of RSS is the file's
    page cache (shared, reclaimable, counted only once touched); `rss - shared` is the
    process's own anonymous memory."""
    import psutil

    info = psutil.Process().memory_info()
    return info.rss / 2**20, (info.rss - info.shared) / 2**20


def _trim() -> None:
    # Collect cycles first (replaced modules can sit in reference cycles until the cyclic GC
    # runs), then return freed heap pages to the kernel: RSS shows what is live.
    gc.collect()
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def measure_variant(variant: str, model_dir: str, tokens: int, repeats: int, threads: int) -> dict:
    """Load, transform, and measure one variant in this process."""
    import torch

    from llmserve.common.models import evaluate, formats, quantize

    torch.set_num_threads(threads)
    _trim()
    rss_before, private_before = _rss_mb()
    loaded = formats.load_model(model_dir)
    # transformers leaves the weights mmapped from the safetensors file; copy them into private
    # memory so the mapping closes and RSS counts each variant's weights, not the file's pages.
    with torch.no_grad():
        for tensor in list(loaded.model.parameters()) + list(loaded.model.buffers()):
            tensor.data = tensor.data.clone()
    if variant == "fp32":
        model = loaded.model
    elif variant == "int8-all":
        model = quantize.quantize_int8_dynamic(loaded.model, per_channel=False, skip=())
    elif variant == "w8a8":  # the engine's W8A8 numerics inside the transformers model
        from llmserve.worker.engine import w8a8

        model = loaded.model
        w8a8.quantize_model_(model, loaded.tokenizer)
    else:
        model = quantize.apply(loaded.model, variant)
    _trim()
    rss_loaded, private_loaded = _rss_mb()
    ids = loaded.tokenizer(PROMPT, return_tensors="pt").input_ids
    evaluate.greedy_decode(model, ids, 4)  # warm-up: first calls pick kernels and allocate
    runs = [evaluate.greedy_decode(model, ids, tokens) for _ in range(repeats)]
    best = max(runs, key=lambda r: r.tokens_per_s)
    started = time.perf_counter()
    ppl = evaluate.text_perplexity(model, loaded.tokenizer, TEXT.read_text())
    _trim()
    rss_end, private_end = _rss_mb()  # every weight touched by now: the steady state
    return {
        "variant": variant,
        "weights_mb": round(evaluate.weight_bytes(model) / 2**20, 1),
        "rss_loaded_mb": round(rss_loaded, 1),
        "private_loaded_mb": round(private_loaded, 1),
        "rss_end_mb": round(rss_end, 1),
        "model_rss_mb": round(rss_end - rss_before, 1),
        "private_end_mb": round(private_end, 1),
        "rss_before_load_mb": round(rss_before, 1),
        "private_before_load_mb": round(private_before, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "decode_tok_s": round(best.tokens_per_s, 2),
        "decode_tok_s_runs": [round(r.tokens_per_s, 2) for r in runs],
        "prefill_s": round(best.prefill_s, 3),
        "perplexity": round(ppl, 4),
        "perplexity_s": round(time.perf_counter() - started, 1),
        "greedy_tokens": best.tokens,
    }


def run_all(args) -> dict:
    rows = []
    for variant in args.variants:
        cmd = [sys.executable, __file__, "--child", variant, "--model", args.model,
               "--tokens", str(args.tokens), "--repeats", str(args.repeats), "--threads", str(args.threads)]  # fmt: skip
        print(f"[{variant}] measuring ...", file=sys.stderr, flush=True)
        out = subprocess.run(cmd, check=True, capture_output=True, text=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"[{variant}] {rows[-1]['decode_tok_s']} tok/s, ppl {rows[-1]['perplexity']}", file=sys.stderr)
    base = next(r for r in rows if r["variant"] == "fp32")
    for r in rows:
        r["speedup_vs_fp32"] = round(r["decode_tok_s"] / base["decode_tok_s"], 2)
        r["perplexity_delta"] = round(r["perplexity"] - base["perplexity"], 4)
        r["same_greedy_as_fp32"] = r["greedy_tokens"] == base["greedy_tokens"]
    return {"machine": _machine(args), "results": rows}


def _machine(args) -> dict:
    import torch

    return {
        "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        "threads": args.threads, "torch": torch.__version__, "quantized_engine": torch.backends.quantized.engine,
        "load_average": [round(x, 2) for x in os.getloadavg()], "model": args.model,
        "decode_tokens": args.tokens, "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }  # fmt: skip


def write_markdown(report: dict, path: Path) -> None:
    m = report["machine"]
    lines = [
        "# Quantization on CPU: fp32 vs int8 dynamic vs bf16 vs w8a8",
        "",
        f"Model `{Path(m['model']).name}`, torch {m['torch']} ({m['quantized_engine']} int8 kernels), "
        f"{m['threads']} thread(s) on a {m['cores']}-core machine shared with other jobs "
        f"(load average {m['load_average']} at the end): ratios matter more than absolute numbers.",
        f"Greedy decode of {m['decode_tokens']} tokens at batch 1 (best of several runs); perplexity on "
        "`bench/data/perplexity.txt` (~2.7k tokens, 512-token windows). Produced by `bench/quant_bench.py`.",
        "",
        "RSS is measured after the run with freed heap trimmed; weights are copied out of the "
        "safetensors mmap first, so `model RSS` (RSS minus the process before loading: torch, "
        "transformers) is the variant's own weights plus runtime buffers. Peak RSS includes the fp32 "
        "model the other variants are made from.",
        "`w8a8` is the engine's CPU mode (int8 weights x per-token int8 activations, SmoothQuant) run "
        "inside the transformers model: its perplexity is the engine's, its decode speed is not (the "
        "engine's own is in `engine-cpu.md`).",
        "",
        "| variant | weights MiB | model RSS MiB | RSS MiB | peak RSS MiB | decode tok/s | vs fp32 | perplexity | Δ ppl | same greedy text |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['variant']} | {r['weights_mb']} | {r['model_rss_mb']} | {r['rss_end_mb']} | {r['peak_rss_mb']} | "
            f"{r['decode_tok_s']} | {r['speedup_vs_fp32']}x | {r['perplexity']} | {r['perplexity_delta']:+} | "
            f"{'yes' if r['same_greedy_as_fp32'] else 'no'} |"
        )
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="HF model dir (default: the built-in SmolLM2)")
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.model is None:
        from llmserve.common.model_store import DEFAULT_MODEL, resolve_model

        args.model = str(resolve_model(DEFAULT_MODEL))
    if args.child:
        print(json.dumps(measure_variant(args.child, args.model, args.tokens, args.repeats, args.threads)))
        return 0
    if "fp32" not in args.variants:
        args.variants.insert(0, "fp32")  # the baseline every delta is against
    report = run_all(args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "quantization.json").write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(report, RESULTS / "quantization.md")
    print((RESULTS / "quantization.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
