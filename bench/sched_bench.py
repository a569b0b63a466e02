"""`make bench-sched` (run by `make bench` too): the quiet tenant's TTFT under a heavy one, with
fair share by tokens against fair share by requests, in one run.

The whole suite as `make run` starts it (real Redis, gateway, scheduler, worker processes, the
default model), once per arm; the arms differ only in the scheduler's `fair_share_unit`:
- tenant `heavy`: HEAVY_STREAMS closed-loop streams of ~400-token prompts;
- tenant `quiet`: a burst of QUIET_BURST short prompts every QUIET_EVERY_S seconds (a client
  fanning out a few small calls at once: low average rate), none in the last QUIET_TAIL_S;
- all greedy, NEW_TOKENS new tokens each (ignore_eos, so every request is the same size).
The worker runs a small batch (MAX_SEQS sequences, MAX_BACKLOG more taken ahead) so the heavy
tenant's streams outnumber what it takes and the rest wait at the scheduler, where fair share
orders them. Only what happens after WARMUP_S counts; at the end whatever still runs is
cancelled, and a quiet request not answered by then counts with its wait so far (a lower bound).

Writes bench/results/scheduling.{json,md}. `python bench/sched_bench.py [--seconds 60]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
from pathlib import Path

from llmserve.cli.redis_server import RedisServer
from llmserve.cli.suite import LocalSuite, Ports
from llmserve.client.aio import AsyncClient
from llmserve.common.model_store import DEFAULT_MODEL
from llmserve.common.stats import quantile

RESULTS = Path(__file__).parent / "results"
NEW_TOKENS = 32
HEAVY_STREAMS, QUIET_BURST, QUIET_EVERY_S = 16, 4, 8.0
MAX_SEQS, MAX_BACKLOG = 8, 1
WARMUP_S, QUIET_TAIL_S = 10.0, 15.0
KEYS = {"heavy": "bench-heavy-key", "quiet": "bench-quiet-key"}
FILLER = ("The committee reviewed the quarterly report on regional water use, noting that "
          "irrigation demand rose while household consumption held steady across most districts. ")


def heavy_prompt(i: int) -> str:
    # A distinct opening per request: no prefix-cache hits, every prompt is prefilled in full.
    return f"Report {i}. " + FILLER * 17 + "Summarise the findings."


def quiet_prompt(i: int) -> str:
    return f"Question {i}: what is {i % 9 + 2} times 3?"


async def one(client: AsyncClient, prompt: str, rec: dict) -> None:
    """One stream; `rec` (start, first-token time, tokens by arrival) fills in as it runs."""
    rec.update(start=time.monotonic(), first=None, tokens=[], error=None)
    try:
        async for piece in client.stream(DEFAULT_MODEL, prompt=prompt, max_tokens=NEW_TOKENS, temperature=0.0,
                                         ignore_eos=True):
            if piece.token_ids:
                now = time.monotonic()
                rec["first"] = rec["first"] or now
                rec["tokens"].append((now, len(piece.token_ids)))
    except asyncio.CancelledError:
        raise
    except Exception as e:  # an error is a result: counted, not hidden
        rec["error"] = type(e).__name__


async def load(address: str, seconds: float) -> dict[str, list[dict]]:
    """Both tenants until `seconds`; then whatever is still running is cancelled (and a quiet
    request without its first token by then is reported as unanswered, not dropped)."""
    logs: dict[str, list[dict]] = {"heavy": [], "quiet": []}
    t0 = time.monotonic()
    end = t0 + seconds
    heavy = AsyncClient(address, api_key=KEYS["heavy"], timeout=300)
    quiet = AsyncClient(address, api_key=KEYS["quiet"], timeout=300)

    async def heavy_stream(k: int) -> None:
        i = k
        while time.monotonic() < end:
            logs["heavy"].append(rec := {})
            await one(heavy, heavy_prompt(i), rec)
            i += HEAVY_STREAMS

    async def quiet_bursts() -> None:
        n, tasks = 0, []
        await asyncio.sleep(QUIET_EVERY_S / 2)
        while time.monotonic() < end - QUIET_TAIL_S:  # the last bursts have time to be answered
            for _ in range(QUIET_BURST):
                logs["quiet"].append(rec := {})
                tasks.append(asyncio.ensure_future(one(quiet, quiet_prompt(n), rec)))
                n += 1
            await asyncio.sleep(QUIET_EVERY_S)
        await asyncio.gather(*tasks)

    tasks = [asyncio.ensure_future(quiet_bursts())] + [asyncio.ensure_future(heavy_stream(k))
                                                        for k in range(HEAVY_STREAMS)]
    await asyncio.wait(tasks, timeout=max(0.0, end - time.monotonic()))
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await heavy.close()
    await quiet.close()
    return {"t0": t0, "end": end, **logs}


def summarise(logs: dict, seconds: float) -> dict:
    lo, hi = logs["t0"] + WARMUP_S, logs["end"]
    quiet = [r for r in logs["quiet"] if r and r["start"] >= lo]
    answered = [(r["first"] - r["start"]) * 1000 for r in quiet if r["first"]]
    # Unanswered by the end: their TTFT is at least end - start; counted at that bound.
    bounded = answered + [(hi - r["start"]) * 1000 for r in quiet if not r["first"] and not r["error"]]
    heavy_tokens = sum(n for r in logs["heavy"] if r for at, n in r["tokens"] if lo <= at < hi)
    heavy_ttft = [(r["first"] - r["start"]) * 1000 for r in logs["heavy"] if r and r["first"] and r["start"] >= lo]
    return {
        "quiet_requests": len(quiet), "quiet_unanswered": len(bounded) - len(answered),
        "quiet_ttft_p50_ms": round(quantile(bounded, 0.5, method="floor"), 1),
        "quiet_ttft_p99_ms": round(quantile(bounded, 0.99, method="floor"), 1),
        "quiet_ttft_max_ms": round(max(bounded), 1),
        "heavy_tok_s": round(heavy_tokens / (hi - lo), 1),
        "heavy_ttft_p50_ms": round(quantile(heavy_ttft, 0.5, method="floor"), 1) if heavy_ttft else None,
        "errors": {t: sum(bool(r and r["error"]) for r in logs[t]) for t in ("heavy", "quiet")},
    }


def run_arm(unit: str, seconds: float) -> dict:
    env = {
        "LLMSERVE_SCHEDULER_FAIR_SHARE_UNIT": unit,
        "LLMSERVE_GATEWAY_API_KEYS": ",".join(f"{t}={k}" for t, k in KEYS.items()),
        "LLMSERVE_WORKER_MAX_NUM_SEQS": str(MAX_SEQS), "LLMSERVE_WORKER_MAX_BACKLOG": str(MAX_BACKLOG),
    }
    with RedisServer() as redis:
        suite = LocalSuite(ports=Ports.free(), redis_url=redis.url, log_dir=Path(f"/tmp/llmserve-sched-bench/{unit}"),
                           env=env, with_monitor=False)
        suite.start(timeout=600)
        try:
            load_before = Path("/proc/loadavg").read_text().split()[:3]
            logs = asyncio.run(load(f"127.0.0.1:{suite.ports.gateway}", seconds))
            row = summarise(logs, seconds)
            row["loadavg_before"], row["loadavg_after"] = load_before, Path("/proc/loadavg").read_text().split()[:3]
        finally:
            suite.stop()
    print(f"fair share by {unit}: {row}", flush=True)
    return row


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    flags = next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("flags")), [])
    isa = [name for flag, name in (("avx512f", "AVX-512"), ("amx_tile", "AMX")) if flag in flags]
    return f"{os.cpu_count()} cores ({cpu}{', ' + ' + '.join(isa) if isa else ''}), {platform.system()} {platform.release()}"


def write(rows: dict[str, dict], seconds: float) -> None:
    tok, req = rows["tokens"], rows["requests"]
    ratio = {k: round(req[k] / tok[k], 2) if tok[k] else None
             for k in ("quiet_ttft_p50_ms", "quiet_ttft_p99_ms", "heavy_tok_s")}
    meta = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "model": DEFAULT_MODEL, "seconds_per_arm": seconds, "warmup_s": WARMUP_S, "new_tokens": NEW_TOKENS,
            "heavy_streams": HEAVY_STREAMS, "quiet_burst": QUIET_BURST, "quiet_every_s": QUIET_EVERY_S,
            "worker_max_num_seqs": MAX_SEQS, "worker_max_backlog": MAX_BACKLOG}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scheduling.json").write_text(json.dumps({"meta": meta, "arms": rows, "requests_over_tokens": ratio},
                                                        indent=2) + "\n")
    lines = [
        "# Scheduling benchmark: fair share by tokens vs by requests\n",
        f"{meta['machine']}; run {meta['date']}; {DEFAULT_MODEL}, real Redis, gateway, scheduler and worker "
        f"processes. Tenant `heavy`: {HEAVY_STREAMS} closed-loop streams of ~400-token prompts; tenant `quiet`: "
        f"{QUIET_BURST} short prompts at once every {QUIET_EVERY_S:g} s; {NEW_TOKENS} new tokens each (greedy, "
        f"ignore_eos). Worker: max_num_seqs {MAX_SEQS}, max_backlog {MAX_BACKLOG}. {seconds:g} s per arm, the "
        f"first {WARMUP_S:g} s not counted. Only `LLMSERVE_SCHEDULER_FAIR_SHARE_UNIT` differs.\n",
        "| fair share by | quiet TTFT p50 | quiet TTFT p99 | quiet requests (unanswered) | heavy tok/s "
        "| heavy TTFT p50 | errors | load average (before → after) |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for unit, r in rows.items():
        lines.append(f"| {unit} | {r['quiet_ttft_p50_ms']:.0f} ms | {r['quiet_ttft_p99_ms']:.0f} ms | "
                     f"{r['quiet_requests']} ({r['quiet_unanswered']}) | {r['heavy_tok_s']:.1f} | {_ms(r['heavy_ttft_p50_ms'])} | "
                     f"{r['errors']} | {' '.join(r['loadavg_before'])} → {' '.join(r['loadavg_after'])} |")
    lines.append(f"| **requests / tokens** | **{ratio['quiet_ttft_p50_ms']}×** | **{ratio['quiet_ttft_p99_ms']}×** | | "
                 f"{ratio['heavy_tok_s']}× | | | |")
    lines += [
        "",
        "By requests a heavy request costs what a quiet one does, so a quiet burst alternates with "
        "the heavy backlog and the quiet tenant gets at most half of the dispatches; by tokens a "
        "heavy request (~470 tokens with its output) costs ~10 quiet ones (~45), so a burst goes ahead of the "
        "backlog. A quiet request still unanswered when the arm ends counts with its wait so far: "
        "with unanswered ones the p99 (and the ratio) is a lower bound. This machine is shared: the "
        "load average says how much, and the absolute times (not the ratio) move with it.",
    ]
    (RESULTS / "scheduling.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="load per arm, the warm-up included")
    args = parser.parse_args()
    rows = {unit: run_arm(unit, args.seconds) for unit in ("tokens", "requests")}
    write(rows, args.seconds)


if __name__ == "__main__":
    main()
