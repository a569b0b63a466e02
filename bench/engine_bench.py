"""Offline engine benchmark: LLMEngine against transformers `generate`, same workload, one run.

CPU (default): the real model, seeded chat prompts, 64 new tokens (ignore_eos), closed loop
at concurrency 1/4/16/32 for the engine (fp32 and bf16); baselines: `generate` one request
at a time, and static left-padded batches of each size. GPU (`--device cuda`): 128-token
prompts, 128 new tokens, concurrency 1/16/64/256; baselines add a static-cache +
torch.compile `generate`. Reports output tok/s, TTFT and inter-token latency p50/p99, and
peak RSS (CPU) or peak GPU memory; writes bench/results/engine-<device>.{json,md}.

    python bench/engine_bench.py [--quick] [--device cuda] [--random-weights]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_systems import (  # noqa: E402
    EngineSystem,
    HFGenerate,
    RssSampler,
    greedy_agreement,
    perplexity_delta,
)
from prompts import chat_prompts, chat_token_ids, fixed_length_prompts  # noqa: E402

from llmserve.common.model_store import resolve_model  # noqa: E402
from llmserve.worker.engine.loader import tune_cpu_malloc  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--model", default="SmolLM2-135M-Instruct")
    p.add_argument("--random-weights", action="store_true", help="build the model from its config")
    p.add_argument("--concurrency", type=int, nargs="*", help="default: 1 4 16 32 (CPU), 1 16 64 256 (GPU)")
    p.add_argument("--new-tokens", type=int, help="default: 64 (CPU), 128 (GPU)")
    p.add_argument(
        "--dtypes", nargs="*",
        help="engine modes (a dtype, w8a8, int8 or int4); default: float32 bfloat16 w8a8 (CPU), bfloat16 (GPU)"
    )
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--no-baselines", action="store_true")
    p.add_argument("--quick", action="store_true", help="smoke run: fewer levels, tokens and requests")
    p.add_argument("--out", type=Path, help="output stem (default bench/results/engine-<device>)")
    return p.parse_args()


def settings(args) -> dict:
    gpu = args.device == "cuda"
    s = {
        "concurrency": args.concurrency or ([1, 16, 64, 256] if gpu else [1, 4, 16, 32]),
        "new_tokens": args.new_tokens or (128 if gpu else 64),
        "dtypes": args.dtypes or (["bfloat16"] if gpu else ["float32", "bfloat16", "w8a8"]),
        "prompt_len": 128 if gpu else None,
    }
    if args.quick:
        s["concurrency"] = [c for c in s["concurrency"] if c <= 16][:3] or [1]
        s["new_tokens"] = min(s["new_tokens"], 16)
    return s


def requests_for(concurrency: int, quick: bool) -> int:
    """Closed loop: enough requests that the loop runs at full concurrency most of the time."""
    return max(concurrency, 4) if quick else max(2 * concurrency, 4)


def load(args):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if args.random_weights:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(path)))
    else:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    return path, tokenizer, model.eval()


def workload(tokenizer, s, n: int) -> list[list[int]]:
    if s["prompt_len"]:
        return fixed_length_prompts(tokenizer, n, s["prompt_len"])
    return chat_token_ids(tokenizer, chat_prompts(n))


def run_engines(args, s, hf_model, tokenizer, rss) -> tuple[list[dict], dict]:
    rows, tokens_by_dtype = [], {}
    for dtype in s["dtypes"]:
        system = EngineSystem(hf_model, tokenizer, args.device, dtype, args.threads, max(s["concurrency"]))
        for conc in s["concurrency"]:
            prompts = workload(tokenizer, s, requests_for(conc, args.quick))
            with rss.measure() as mem:
                row, tokens = system.run(prompts, conc, s["new_tokens"])
            rows.append({**row, **mem.result()})
            tokens_by_dtype.setdefault(dtype, {})[conc] = tokens
            print(json.dumps(rows[-1]), flush=True)
        system.close()
    return rows, tokens_by_dtype


def run_baselines(args, s, hf_model, tokenizer, rss) -> list[dict]:
    rows = []
    variants = [("hf_generate", False)] + (
        [("hf_generate_static_compile", True)] if args.device == "cuda" else []
    )
    for name, compiled in variants:
        hf = HFGenerate(hf_model, tokenizer, args.device, compiled=compiled)
        seq_prompts = workload(tokenizer, s, 2 if args.quick else 4)
        with rss.measure() as mem:
            rows.append({**hf.run_sequential(seq_prompts, s["new_tokens"], name), **mem.result()})
        print(json.dumps(rows[-1]), flush=True)
        for conc in s["concurrency"]:
            if conc == 1:
                continue
            with rss.measure() as mem:
                row = hf.run_static(workload(tokenizer, s, conc), s["new_tokens"], name)
            rows.append({**row, **mem.result()})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def quality(s, hf_model, tokenizer, tokens_by_dtype, device) -> dict:
    """How much non-fp32 engine dtypes change the output, against the fp32 engine."""
    out = {}
    base = tokens_by_dtype.get("float32")
    for dtype, by_conc in tokens_by_dtype.items():
        if dtype == "float32" or base is None:
            continue
        conc = max(set(by_conc) & set(base))
        out[dtype] = {
            "greedy_agreement_vs_fp32": greedy_agreement(base[conc], by_conc[conc]),
            "perplexity": perplexity_delta(hf_model, tokenizer, dtype, device),
        }
    return out


def machine(device: str) -> dict:
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        # Other work on the machine skews every number; recorded so a reader can tell.
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def to_markdown(result: dict) -> str:
    cols = ["system", "dtype", "concurrency", "requests", "output_tok_s", "ttft_p50_ms", "ttft_p99_ms"]
    cols += ["itl_p50_ms", "itl_p99_ms", "peak_rss_mb", "peak_gpu_mb"]
    lines = [
        f"# Engine benchmark ({result['device']})",
        "",
        f"Machine: {result['machine']}",
        "",
        f"Workload: {result['settings']}",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    for row in result["rows"]:
        lines.append("| " + " | ".join(_fmt(row.get(c, "")) for c in cols) + " |")
    if result.get("quality"):
        lines += [
            "",
            "## Quality of non-fp32 dtypes",
            "",
            "```",
            json.dumps(result["quality"], indent=2),
            "```",
        ]
    lines += ["", *result.get("notes", [])]
    return "\n".join(lines) + "\n"


def _fmt(value) -> str:
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def main() -> None:
    args = parse_args()
    s = settings(args)
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
        tune_cpu_malloc()  # same allocator settings for every system in the run
    path, tokenizer, hf_model = load(args)
    rss = RssSampler(args.device)
    rows, tokens_by_dtype = run_engines(args, s, hf_model, tokenizer, rss)
    if not args.no_baselines:
        rows += run_baselines(args, s, hf_model, tokenizer, rss)
    result = {
        "device": args.device,
        "model": str(path) + (" (random weights)" if args.random_weights else ""),
        "machine": machine(args.device),
        "settings": {**s, "quick": args.quick, "threads": args.threads},
        "rows": rows,
        "quality": quality(s, hf_model, tokenizer, tokens_by_dtype, args.device),
        "notes": [
            "Engine: closed loop (N requests kept in the engine). Baselines: `generate` one request "
            "at a time (concurrency 1) and static left-padded batches of N.",
            "Peak RSS is of the whole process (which also holds the transformers model) during each run.",
            "glibc malloc tuning (loader.tune_cpu_malloc) is applied to the whole process: all systems.",
        ],
    }
    stem = args.out or RESULTS / f"engine-{args.device}{'-quick' if args.quick else ''}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2))
    stem.with_suffix(".md").write_text(to_markdown(result))
    print(to_markdown(result))


if __name__ == "__main__":
    main()
