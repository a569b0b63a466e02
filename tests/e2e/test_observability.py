"""The suite as real processes, watched the way ops watch it: a real Prometheus (Debian's
`prometheus`) scrapes every process's /metrics and the monitor for ~60 s of light load with
preemption forced (a tiny KV budget); every Grafana panel's query then returns data through
Prometheus' HTTP API, every /metrics passes `promtool check metrics`, the capacity numbers
agree between the worker's own endpoint and the monitor, and the JSON log lines of one
request's gateway, scheduler and worker work share its request_id and trace_id, with no key
and no prompt text anywhere in the logs.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import pytest

from llmserve.cli.redis_server import RedisServer, free_port
from llmserve.cli.suite import LocalSuite, Ports
from llmserve.client import Client
from llmserve.common.model_store import DEFAULT_MODEL
from tests.deploy.schemas import ROOT
from tests.support.prom import parse, promtool_check_metrics, tool, value

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]
LOAD_S = 60.0
PROMPT = "Name three zebra quartz lanterns, please."  # distinctive: must never reach a log
BAD_KEY = "sk-wrong-key-must-not-be-logged"


def _targets(suite: LocalSuite) -> dict[str, int]:
    ports = {s.name: s.metrics_port for s in suite.services}
    return {**ports, "monitor-aggregate": suite.ports.monitor_http}


def _prometheus(tmp: Path, targets: dict[str, int]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    jobs = [{"job_name": name, "static_configs": [{"targets": [f"127.0.0.1:{p}"]}]} for name, p in targets.items()]
    config = {"global": {"scrape_interval": "2s", "evaluation_interval": "2s"},
              "rule_files": [str(ROOT / "deploy/grafana/prometheus-rules.yml")], "scrape_configs": jobs}
    (tmp / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    with open(tmp / "prometheus.log", "wb") as log:
        process = subprocess.Popen(
            [tool("prometheus"), f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=log)
    return process, f"http://127.0.0.1:{port}"


def _wait_ready(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{url} never became ready"
        time.sleep(0.5)


def _load(suite: LocalSuite, until: float) -> dict[str, int]:
    """Bursts of concurrent streams (enough to overrun the KV budget), whole completions, and
    refused requests, until `until`."""
    counts = {"ok": 0, "refused": 0}
    lock = threading.Lock()
    address = f"127.0.0.1:{suite.ports.gateway}"
    messages = [{"role": "user", "content": PROMPT}]
    with Client(address, api_key=suite.api_key) as client, Client(address, api_key=BAD_KEY) as bad, \
            ThreadPoolExecutor(6) as pool:
        def one(i: int) -> None:
            if i % 2:
                list(client.stream(DEFAULT_MODEL, messages=messages, max_tokens=32, temperature=0.0))
            else:
                client.generate(DEFAULT_MODEL, messages=messages, max_tokens=12, temperature=0.0)
            with lock:
                counts["ok"] += 1

        while time.monotonic() < until:
            list(pool.map(one, range(6)))
            try:
                bad.generate(DEFAULT_MODEL, PROMPT, max_tokens=4)
            except grpc.RpcError:
                counts["refused"] += 1
    return counts


@pytest.fixture(scope="module")
def watched(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("observability")
    tool("prometheus")
    with RedisServer() as redis:
        suite = LocalSuite(ports=Ports.free(), redis_url=redis.url, log_dir=tmp / "logs", env={
            "LLMSERVE_LOG_FORMAT": "json",
            "LLMSERVE_WORKER_NUM_KV_BLOCKS": "10",  # 160 tokens; 6 requests of 47..67 tokens: preemption
            "LLMSERVE_WORKER_MAX_NUM_SEQS": "6",
        })
        prometheus = None
        try:
            suite.start(timeout=300)
            prometheus, prom_url = _prometheus(tmp, _targets(suite))
            _wait_ready(prom_url + "/-/ready", timeout=60)
            counts = _load(suite, time.monotonic() + LOAD_S)
            time.sleep(8)  # a last OTLP export (5 s) and scrape (2 s) after the load
            yield suite, prom_url, counts, tmp
        finally:
            if prometheus is not None:
                prometheus.terminate()
                prometheus.wait(10)
            suite.stop()


def _query(prom_url: str, expr: str) -> list:
    body = httpx.get(prom_url + "/api/v1/query", params={"query": expr}, timeout=30).json()
    assert body["status"] == "success", (expr, body)
    return body["data"]["result"]


def _panel_queries() -> list[tuple[str, str]]:
    dashboard = json.loads((ROOT / "deploy/grafana/llmserve.json").read_text())
    return [(p["title"], t["expr"].replace("$model", ".*"))
            for p in dashboard["panels"] for t in p.get("targets", []) if t.get("expr")]


def test_the_load_ran_and_prometheus_scraped_every_target(watched):
    suite, prom_url, counts, _ = watched
    assert counts["ok"] >= 12 and counts["refused"] >= 2
    targets = httpx.get(prom_url + "/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
    assert {t["labels"]["job"] for t in targets} == set(_targets(suite))
    assert all(t["health"] == "up" for t in targets), [(t["labels"]["job"], t["lastError"]) for t in targets]


def test_every_dashboard_panel_query_returns_data(watched):
    _, prom_url, _, _ = watched
    has_gpu = shutil.which("nvidia-smi") is not None
    empty = [title for title, expr in _panel_queries()
             if not _query(prom_url, expr) and (has_gpu or "gpu" not in expr)]
    assert not empty, f"panels with no data: {empty}"
    assert _query(prom_url, "llmserve:recommended_workers")  # the HPA's recording rule


def test_every_metrics_endpoint_passes_promtool(watched):
    suite, _, _, _ = watched
    for name, port in _targets(suite).items():
        promtool_check_metrics(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).content)
        if name != "monitor-aggregate":
            assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).text == "SERVING\n", name


def test_capacity_numbers_agree_between_the_worker_and_the_monitor(watched):
    suite, _, counts, _ = watched
    own = {s.name: s.metrics_port for s in suite.services}
    worker = parse(httpx.get(f"http://127.0.0.1:{own['worker']}/metrics", timeout=10).content)
    gateway = parse(httpx.get(f"http://127.0.0.1:{own['gateway']}/metrics", timeout=10).content)
    monitor = parse(httpx.get(f"http://127.0.0.1:{suite.ports.monitor_http}/metrics", timeout=10).content)
    preempted = value(worker, "llmserve_preemptions_total")
    assert preempted > 0
    computed = value(worker, "llmserve_engine_tokens_total", phase="prefill") + value(
        worker, "llmserve_kv_prefix_hits_total")
    assert computed == value(gateway, "llmserve_tokens_in_total") > 0  # every prompt token, once
    assert value(gateway, "llmserve_requests_total", status="ok") == counts["ok"]
    for name in ("llmserve_preemptions_total", "llmserve_batch_size_count", "llmserve_batch_size_sum"):
        assert value(monitor, name, service="worker") == value(worker, name), name
    assert value(worker, "llmserve_batch_size_sum") > value(worker, "llmserve_batch_size_count")  # it batched


def _json_lines(path: Path) -> list[dict]:
    lines = []
    for raw in path.read_text(errors="replace").splitlines():
        if raw.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                lines.append(json.loads(raw))
    return lines


def test_log_lines_of_a_request_share_its_ids_and_hold_no_secrets(watched):
    suite, _, _, tmp = watched
    logs = {name: _json_lines(tmp / "logs" / f"{name}.log") for name in ("gateway", "scheduler", "worker")}
    request_lines = {name: [line for line in lines if "request_id" in line] for name, lines in logs.items()}
    for name, lines in request_lines.items():
        assert lines, f"{name} logged nothing about any request"
        incomplete = [line for line in lines if not all(line.get(f) for f in ("request_id", "trace_id", "model"))
                      or "tenant" not in line]
        assert not incomplete, (name, incomplete[:3])
    finished = next(line for line in request_lines["gateway"]
                    if line["event"] == "request finished" and line["status"] == "ok")
    rid, tid = finished["request_id"], finished["trace_id"]
    for name in ("scheduler", "worker"):
        mine = [line for line in request_lines[name] if line["request_id"] == rid]
        assert mine and all(line["trace_id"] == tid for line in mine), name
    everything = "".join((tmp / "logs" / f"{n}.log").read_text(errors="replace") for n in logs)
    for secret in (suite.api_key, BAD_KEY, "zebra quartz"):
        assert secret not in everything
