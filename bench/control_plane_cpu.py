"""Where the stack's CPU goes per output token, process by process (issue 14).

Starts the suite as `make run` does (`LocalSuite`: Redis, monitor, worker, scheduler, gateway as
real processes, the default worker mode), drives 1, 4 and 16 closed-loop streams through the
OpenAI HTTP API with ../shared/bench/loadgen.py (greedy, 64 new tokens), and records per level
each process's CPU seconds (psutil: user + system, all threads) per 1,000 output tokens. The
worker is split by thread: its event loop (runtime, token-sink publishing, heartbeats, intake),
its engine thread, its other Python threads (OTLP exporters, metrics) and its native threads
(OpenMP pool, gRPC core).

`--baseline REV` runs REV's code and this tree's as two suites at the same time (on a shared
machine the only fair comparison), labelled '<label> before' and '<label> after'.
`--label` names the run; results accumulate in bench/results/control-plane-cpu.json
and the table in control-plane-cpu.md is rewritten from every label there. `--profile` instead
records py-spy profiles (raw, collapsed stacks) of the gateway, scheduler and worker at 1 stream
and writes the top self-time frames of each to bench/results/control-plane-profile-<label>.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SHARED = next((p for p in (Path(os.environ.get("LLMSERVE_BENCH_SHARED", "")), ROOT.parent / "shared/bench",
                           Path("/work/shared/bench")) if (p / "loadgen.py").is_file()), None)
PY_SPY = Path(sys.executable).with_name("py-spy")
PLANE = ("gateway", "scheduler", "monitor", "redis")
WORKER_PARTS = ("worker_loop", "worker_engine", "worker_py_other", "worker_native")


def process_cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def worker_threads(pid: int) -> dict[str, set[int]]:
    """Native thread ids of the worker's Python threads, by role (py-spy dump names them)."""
    out = subprocess.run([str(PY_SPY), "dump", "--pid", str(pid), "--json", "--nonblocking"],
                         capture_output=True, text=True, check=True).stdout
    roles: dict[str, set[int]] = {"worker_engine": set(), "worker_py_other": set()}
    for thread in json.loads(out):
        tid = thread.get("os_thread_id")
        if tid is None or tid == pid:
            continue
        name = thread.get("thread_name") or ""
        roles["worker_engine" if name.startswith("engine-") else "worker_py_other"].add(tid)
    return roles


def worker_split(proc: psutil.Process, roles: dict[str, set[int]]) -> dict[str, float]:
    split = dict.fromkeys(WORKER_PARTS, 0.0)
    for t in proc.threads():
        role = ("worker_loop" if t.id == proc.pid else "worker_engine" if t.id in roles["worker_engine"]
                else "worker_py_other" if t.id in roles["worker_py_other"] else "worker_native")
        split[role] += t.user_time + t.system_time
    return split


def snapshot(procs: dict[str, psutil.Process], roles: dict[str, set[int]]) -> dict[str, float]:
    cpu = {name: process_cpu(p) for name, p in procs.items()}
    return cpu | worker_split(procs["worker"], roles)


def loadgen_cmd(url: str, model: str, api_key: str, level: int, requests: int) -> list[str]:
    return [sys.executable, str(SHARED / "loadgen.py"), "--url", url, "--model", model, "--api-key", api_key,
            "-c", str(level), "-n", str(requests), "--warmup", "2", "--max-tokens", "64", "--temperature", "0"]


def loadgen_result(out: str) -> dict:
    return json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])


def loadgen(url: str, model: str, api_key: str, level: int, requests: int) -> dict:
    out = subprocess.run(loadgen_cmd(url, model, api_key, level, requests), check=True, capture_output=True,
                         text=True).stdout
    return loadgen_result(out)


def measure_level(suites: list[Suite], level: int, requests: int) -> list[dict]:
    """One level on every suite at once (side by side: the same machine load for each)."""
    from llmserve.common.model_store import DEFAULT_MODEL

    before, wall = [s.snapshot() for s in suites], time.monotonic()
    gens = [subprocess.Popen(loadgen_cmd(f"http://127.0.0.1:{s.suite.ports.http}", DEFAULT_MODEL, s.suite.api_key,
                                         level, requests), stdout=subprocess.PIPE, text=True) for s in suites]
    outs = [g.communicate()[0] for g in gens]
    after, wall = [s.snapshot() for s in suites], time.monotonic() - wall
    return [_level_row(level, requests, loadgen_result(out), b, a, wall) for out, b, a in zip(outs, before, after,
                                                                                              strict=True)]


def _level_row(level: int, requests: int, r: dict, before: dict, after: dict, wall: float) -> dict:
    # loadgen's two warm-up requests cost the same CPU; their tokens are estimated alike.
    tokens = r["output_tokens_total"] * (requests + 2) / requests
    per_1k = {k: round((after[k] - before[k]) / tokens * 1000, 3) for k in after}
    per_1k["control_plane"] = round(sum(per_1k[k] for k in PLANE), 3)
    per_1k["worker_non_engine"] = round(per_1k["worker_loop"] + per_1k["worker_py_other"], 3)
    return {"level": level, "output_tok_s": r["output_tok_per_s"], "ttft_p50_ms": r["ttft_ms"]["p50"],
            "itl_p50_ms": r["itl_ms"]["p50"], "errors": r["errors"], "output_tokens": round(tokens),
            "wall_s": round(wall, 2), "cpu_s_per_1k_tokens": per_1k,
            "loadavg": [round(x, 2) for x in os.getloadavg()]}


class Suite:
    """The suite as `make run` starts it, on free ports, with its own Redis; `env` on top (a
    PYTHONPATH naming another source tree runs that code instead)."""

    def __init__(self, name: str = "suite", env: dict[str, str] | None = None):
        self.name, self.env = name, env or {}

    def __enter__(self):
        from llmserve.cli.redis_server import RedisServer
        from llmserve.cli.suite import LocalSuite, Ports

        self.redis = RedisServer().__enter__()
        self.suite = LocalSuite(ports=Ports.free(), redis_url=self.redis.url, env=self.env,
                                log_dir=Path(f"/tmp/llmserve-cpcpu-logs/{self.name}"))
        self.suite.start(timeout=600)
        self.procs = {s.name: psutil.Process(s.process.pid) for s in self.suite.services}
        self.procs["redis"] = psutil.Process(self.redis.process.pid)
        self.roles: dict[str, set[int]] = {"worker_engine": set(), "worker_py_other": set()}
        return self

    def snapshot(self) -> dict[str, float]:
        return snapshot(self.procs, self.roles)

    def __exit__(self, *exc):
        self.suite.stop()
        self.redis.__exit__(*exc)


def run_measure(args, variants: dict[str, dict[str, str]]) -> dict[str, dict]:
    """Every variant (label -> extra env) started and measured at the same time."""
    with contextlib.ExitStack() as stack:
        suites = [stack.enter_context(Suite(label.replace(" ", "-"), env)) for label, env in variants.items()]
        time.sleep(2)  # let start-up work (warm-up, first heartbeats, first exports) settle
        for s in suites:
            s.roles = worker_threads(s.procs["worker"].pid)
        idle = measure_idle(suites, args.idle_s)
        print(json.dumps({"idle_cpu_ms_per_s": idle}), flush=True)
        levels: list[list[dict]] = []
        for level in args.levels:
            levels.append(measure_level(suites, level, args.requests))
            print(json.dumps(levels[-1]), flush=True)
    side = " side by side with " + ", ".join(variants) if len(variants) > 1 else ""
    return {label: {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": _commit(env),
                    "machine": _machine() + side, "requests_per_level": args.requests,
                    "idle_cpu_ms_per_s": idle[i], "levels": [lv[i] for lv in levels]}
            for i, (label, env) in enumerate(variants.items())}


def measure_idle(suites: list[Suite], seconds: float) -> list[dict[str, float]]:
    """CPU milliseconds per second of each part with no request at all: the fixed cost (polling,
    heartbeats, exports) that a level's per-token figure carries divided by its throughput."""
    before = [s.snapshot() for s in suites]
    time.sleep(seconds)
    after = [s.snapshot() for s in suites]
    return [{k: round((a[k] - b[k]) / seconds * 1000, 2) for k in a} for b, a in zip(before, after, strict=True)]


def run_profile(args) -> None:
    """py-spy of gateway, scheduler and worker while loadgen runs one stream."""
    from llmserve.common.model_store import DEFAULT_MODEL

    out_dir = Path(args.profile_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with Suite(f"profile-{args.label}", {"PYTHONPATH": args.baseline_src} if args.baseline_src else None) as s:
        url = f"http://127.0.0.1:{s.suite.ports.http}"
        loadgen(url, DEFAULT_MODEL, s.suite.api_key, 1, 2)  # warm
        spies = {name: subprocess.Popen([str(PY_SPY), "record", "--pid", str(s.procs[name].pid), "--format", "raw",
                                         "--rate", "200", "--threads", "--gil", "--nonblocking",
                                         "-o", str(out_dir / f"{args.label}-{name}.txt")],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for name in ("gateway", "scheduler", "worker")}
        r = loadgen(url, DEFAULT_MODEL, s.suite.api_key, 1, args.requests)
        for spy in spies.values():
            spy.send_signal(2)
            spy.wait(30)
    lines = [f"# py-spy profiles at 1 stream ({args.label})\n", f"{_machine()}; {args.requests} requests, "
             f"{r['output_tokens_total']} output tokens, {r['output_tok_per_s']} tok/s; {_commit({'PYTHONPATH': args.baseline_src} if args.baseline_src else None)}.\n",
             "Samples at 200 Hz of threads holding the GIL (waits in epoll and native work without the GIL, such as torch kernels, excluded).\n"]
    for name in spies:
        lines += summarize(out_dir / f"{args.label}-{name}.txt", name, r["output_tokens_total"])
    path = RESULTS / f"control-plane-profile-{args.label}.md"
    path.write_text("\n".join(lines) + "\n")
    print(path.read_text())


def summarize(path: Path, name: str, tokens: int, top: int = 25) -> list[str]:
    """Self and inclusive samples per frame of a raw (collapsed) py-spy file."""
    own, incl, threads, total = Counter(), Counter(), Counter(), 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")
        count = int(n)
        total += count
        threads[frames[0]] += count
        own[frames[-1]] += count
        for f in set(frames[1:]):
            incl[f] += count
    out = [f"\n## {name}: {total} samples ({total / 200 / tokens * 1000:.2f} s per 1,000 tokens)\n",
           "By thread: " + ", ".join(f"{t} {n}" for t, n in threads.most_common(6)) + "\n",
           "| self | inclusive | frame |", "|---|---|---|"]
    for frame, n in own.most_common(top):
        out.append(f"| {n / total:.1%} | {incl[frame] / total:.1%} | `{frame}` |")
    out += ["", "Top inclusive:", "", "| inclusive | frame |", "|---|---|"]
    for frame, n in incl.most_common(top):
        out.append(f"| {n / total:.1%} | `{frame}` |")
    return out


def baseline_tree(rev: str) -> str:
    """`rev`'s code as an importable `llmserve` package (what the editable install maps: libs/ is
    `llmserve`, services/<name> is `llmserve.<name>`), with this tree's generated protobuf stubs
    (build output, not in git); a PYTHONPATH naming it wins over the editable install."""
    import tarfile
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="llmserve-baseline-"))
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "libs", "services"], check=True,
                             capture_output=True).stdout
    with tarfile.open(fileobj=__import__("io").BytesIO(archive)) as tar:
        tar.extractall(root / "src", filter="data")
    for service in ("gateway", "scheduler", "worker", "monitor"):
        (root / "src/libs" / service).symlink_to(root / "src/services" / service)
    for stub in [*ROOT.glob("libs/**/*_pb2*.py*"), *ROOT.glob("services/**/*_pb2*.py*")]:
        (root / "src" / stub.relative_to(ROOT)).write_bytes(stub.read_bytes())
    (root / "pkg").mkdir()
    (root / "pkg/llmserve").symlink_to(root / "src/libs")
    return str(root / "pkg")


def _commit(env: dict[str, str] | None = None) -> str:
    if env and env.get("PYTHONPATH"):
        return f"source tree {env['PYTHONPATH']}"
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip() + ("+dirty" if subprocess.run(
                              ["git", "-C", str(ROOT), "diff", "--quiet", "HEAD", "--", "libs", "services"]).returncode
                              else "")


def _machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return f"{platform.machine()}, {os.cpu_count()} cores ({cpu}), load avg {os.getloadavg()[0]:.2f} at the end"


def to_markdown(runs: dict[str, dict]) -> str:
    cols = ("control_plane", *PLANE, "worker", *WORKER_PARTS, "worker_non_engine")
    lines = ["# Control-plane CPU per output token\n",
             "`bench/control_plane_cpu.py`: the suite as `make run` starts it (default worker mode), loadgen.py "
             "through the OpenAI HTTP API (SSE), greedy, 64 new tokens, closed loop. CPU-seconds (user + system, "
             "psutil) per 1,000 output tokens, per process; control plane = gateway + scheduler + monitor + Redis. "
             "Worker threads: loop = its asyncio thread (runtime, token sink, heartbeats), engine = the step thread, "
             "py_other = other Python threads (OTLP export, metrics), native = OpenMP pool and gRPC core; "
             "non_engine = loop + py_other.\n"]
    for label, run in runs.items():
        lines += [f"\n## {label}\n", f"{run['machine']}; run {run['date']}, commit {run['commit']}, "
                  f"{run['requests_per_level']} requests per level (+2 warm-up).\n",
                  "| streams | tok/s | TTFT p50 ms | load avg | " + " | ".join(cols) + " |",
                  "|---|---|---|---|" + "---|" * len(cols)]
        for lv in run["levels"]:
            c = lv["cpu_s_per_1k_tokens"]
            lines.append(f"| {lv['level']} | {lv['output_tok_s']:.1f} | {lv['ttft_p50_ms']:.0f} | "
                         f"{lv['loadavg'][0]:.2f} | " + " | ".join(f"{c.get(k, 0.0):.2f}" for k in cols) + " |")
        if run.get("idle_cpu_ms_per_s"):
            idle = run["idle_cpu_ms_per_s"]
            lines += ["", "With no request at all (CPU milliseconds per second"
                      + (f"; measured {run['idle_measured']}" if run.get("idle_measured") else "") + "): "
                      + ", ".join(f"{k} {idle.get(k, 0.0):.1f}" for k in (*PLANE, *WORKER_PARTS)) + "."]
    for label in runs:
        if label.endswith("before") and label.removesuffix("before") + "after" in runs:
            lines += _ratio(runs[label], runs[label.removesuffix("before") + "after"], label.removesuffix("before"))
    lines += _marginal(runs)
    return "\n".join(lines) + "\n"


def marginal_ms_per_token(run: dict, level: dict) -> dict[str, float]:
    """CPU milliseconds per output token beyond the idle rate: (level CPU - idle rate x wall) /
    tokens, the part that scales with tokens rather than with time (polling, heartbeats,
    exports), so runs at different throughputs compare."""
    idle, per_1k, wall, tokens = run["idle_cpu_ms_per_s"], level["cpu_s_per_1k_tokens"], level["wall_s"], \
        level["output_tokens"]
    parts = (*PLANE, "worker_loop", "worker_py_other")
    return {k: round(per_1k[k] - idle.get(k, 0.0) * wall / tokens, 3) for k in parts}


def _marginal(runs: dict[str, dict]) -> list[str]:
    parts = (*PLANE, "worker_loop", "worker_py_other")
    lines = ["\n## CPU ms per output token beyond the idle rate (see `marginal_ms_per_token`)\n",
             "| run | streams | " + " | ".join(parts) + " | control plane | + worker non-engine |",
             "|---|---|" + "---|" * (len(parts) + 2)]
    for label, run in runs.items():
        for lv in run["levels"]:
            m = marginal_ms_per_token(run, lv)
            plane = sum(m[k] for k in PLANE)
            lines.append(f"| {label} | {lv['level']} | " + " | ".join(f"{m[k]:.2f}" for k in parts)
                         + f" | {plane:.2f} | {plane + m['worker_loop'] + m['worker_py_other']:.2f} |")
    return lines


def _ratio(before: dict, after: dict, name: str) -> list[str]:
    lines = [f"\n## {name}after / {name}before (CPU-s per 1,000 tokens)\n", "| streams | control plane | gateway | scheduler "
             "| monitor | redis | worker non-engine |", "|---|---|---|---|---|---|---|"]
    b = {lv["level"]: lv["cpu_s_per_1k_tokens"] for lv in before["levels"]}
    for lv in after["levels"]:
        a, o = lv["cpu_s_per_1k_tokens"], b.get(lv["level"])
        if o:
            keys = ("control_plane", *PLANE, "worker_non_engine")
            lines.append(f"| {lv['level']} | " + " | ".join(
                f"{o[k]:.2f} → {a[k]:.2f}" + (f" ({a[k] / o[k]:.2f}x)" if o[k] else "") for k in keys) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label", default="after")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--baseline", default="", help="a git revision: its libs/ and services/ are laid out as "
                        "an `llmserve` package in a temporary folder and used as --baseline-src")
    parser.add_argument("--baseline-src", default="", help="a folder whose `llmserve` package is the baseline's "
                        "code: both suites run side by side, labelled '<label> before' and '<label> after'")
    parser.add_argument("--idle-s", type=float, default=20.0, help="seconds of the idle measurement")
    parser.add_argument("--profile", action="store_true", help="py-spy profiles at 1 stream instead")
    parser.add_argument("--profile-dir", default="/tmp/llmserve-cpcpu-profiles")
    args = parser.parse_args()
    if SHARED is None:
        sys.exit("../shared/bench/loadgen.py not found (set LLMSERVE_BENCH_SHARED to its folder)")
    args.levels = [int(x) for x in args.concurrency.split(",") if x.strip() and int(x)]
    if args.baseline:
        args.baseline_src = baseline_tree(args.baseline)
    if args.profile:
        run_profile(args)
        return
    path = RESULTS / "control-plane-cpu.json"
    runs = json.loads(path.read_text()) if path.is_file() else {}
    variants = {args.label: {}}
    if args.baseline_src:  # the baseline's code and this tree's, at the same time
        variants = {f"{args.label} before": {"PYTHONPATH": args.baseline_src}, f"{args.label} after": {}}
    for label, run in run_measure(args, variants).items():
        if not args.levels and label in runs:  # an idle-only run completes an earlier one
            runs[label]["idle_cpu_ms_per_s"] = run["idle_cpu_ms_per_s"]
            runs[label]["idle_measured"] = f"{run['date']}, commit {run['commit']}, {run['machine']}"
        else:
            runs[label] = run
    path.write_text(json.dumps(runs, indent=2))
    write_markdown(runs)
    print((RESULTS / "control-plane-cpu.md").read_text())


NOTES_MARK = "<!-- notes: written by hand, kept when the tables above are regenerated -->"


def write_markdown(runs: dict[str, dict]) -> None:
    md = RESULTS / "control-plane-cpu.md"
    old = md.read_text() if md.is_file() else ""
    notes = old.split(NOTES_MARK, 1)[1] if NOTES_MARK in old else "\n"
    md.write_text(to_markdown(runs) + "\n" + NOTES_MARK + notes)


if __name__ == "__main__":
    main()
