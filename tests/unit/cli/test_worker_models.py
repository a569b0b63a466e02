"""`llmserve models load|loaded|unload --worker` against a real in-process worker, and
`llmserve status` counting each model's own KV on a worker that holds two."""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from llmserve.cli.main import main
from llmserve.cli.status import collect, render
from llmserve.worker.engine.types import EngineRequest, SamplingParams
from tests.support.scripted_engine import ScriptedEngine
from tests.support.stack import INTERNAL_SECRET, model_worker
from tests.support.tiny_models import save_tiny_llama

_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[")  # the in-process worker's own logs


@pytest.fixture(autouse=True)
def _operator(monkeypatch):
    # The CLI derives its operator token from the master secret, as an operator's shell would.
    monkeypatch.setenv("LLMSERVE_INTERNAL_SECRET", INTERNAL_SECRET)


async def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = await asyncio.to_thread(main, list(argv))  # sync gRPC: off the worker's event loop
    out = capsys.readouterr()
    text = "".join(line for line in out.out.splitlines(keepends=True) if not _LOG_LINE.match(line))
    return code, text, out.err


async def test_load_list_and_unload_through_the_cli(redis_url, tmp_path, model_path, capsys):
    tiny = save_tiny_llama(tmp_path / "tiny-cli", 0, model_path)
    async with model_worker(redis_url, "w0", {"other": ScriptedEngine()}, kv_cache_bytes=1 << 20,
                            device="cpu", model_dirs=[str(tmp_path)]) as app:  # fmt: skip
        worker = f"127.0.0.1:{app.port}"
        code, out, _ = await _cli(capsys, "models", "load", "--worker", worker, str(tiny))
        assert code == 0 and out.startswith(f"loaded tiny-cli on {worker} (")

        code, out, _ = await _cli(capsys, "models", "loaded", "--worker", worker, "--json")
        listed = json.loads(out)
        assert [m["served_id"] for m in listed["models"]] == ["other", "tiny-cli"]
        assert listed["memory_used_bytes"] == sum(m["memory_bytes"] for m in listed["models"]) > 0
        code, out, _ = await _cli(capsys, "models", "loaded", "--worker", worker)
        assert any(line.split()[:2] == ["tiny-cli", "serving"] for line in out.splitlines())

        code, out, _ = await _cli(capsys, "models", "unload", "--worker", worker, "tiny-cli")
        assert code == 0 and out.startswith(f"unloaded tiny-cli from {worker} (freed ")
        assert app.service.runtime.models.serving_ids() == ["other"]

        code, _, err = await _cli(capsys, "models", "unload", "--worker", worker, "tiny-cli")
        assert code == 1 and "NOT_FOUND" in err


async def test_status_counts_each_models_own_kv(redis_url):
    engines = {"m-big": ScriptedEngine(total_blocks=100), "m-small": ScriptedEngine(total_blocks=40)}
    async with model_worker(redis_url, "w0", engines):
        # One long request on m-small only: its row shows it, m-big's must not.
        engines["m-small"].add_request(EngineRequest("long", [7], SamplingParams(max_tokens=10**6)))
        await asyncio.sleep(0.4)  # a heartbeat after it
        report = await collect(redis_url, "127.0.0.1:1", "127.0.0.1:1", timeout=0.5)
        engines["m-small"].abort_request("long")
    assert report.workers[0].models == ["m-big", "m-small"]
    assert report.workers[0].model_loads["m-small"].total_kv_blocks == 40
    text = render(report).splitlines()
    assert next(line for line in text if line.startswith("w0 ")).split()[2] == "m-big,m-small"
    start = text.index("MODELS") + 3
    rows = {line.split()[0]: line.split() for line in text[start:start + 2]}
    # workers, queued (no scheduler), running, kv, prefix-cache hits (none: no prompt yet)
    assert rows["m-big"][1:] == ["1", "?", "0", "0%", "-"]
    assert rows["m-small"][1:] == ["1", "?", "1", "2%", "-"]
