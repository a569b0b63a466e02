"""`llmserve batch` through in-process services over real Redis: results, and resuming."""

from __future__ import annotations

import asyncio
import json

from llmserve.cli.batch import completed_ids, read_inputs, run_batch
from tests.support.scripted_engine import ScriptedEngine
from tests.support.stack import API_KEY, MODEL, running_stack


def write_inputs(path, n: int, max_tokens: int = 3) -> None:
    lines = [
        json.dumps({"id": f"q{i}", "prompt": f"question {i}", "max_tokens": max_tokens}) for i in range(n)
    ]
    lines.append(
        json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    )  # id: line no.
    path.write_text("\n".join(lines) + "\n")


def results(path) -> dict[str, dict]:
    return {r["id"]: r for r in map(json.loads, path.read_text().splitlines())}


async def test_batch_writes_one_result_per_input(redis_url, tmp_path, catalog):
    inputs, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_inputs(inputs, 5)
    items = read_inputs(inputs)
    async with running_stack(redis_url, [ScriptedEngine()], catalog) as stack:
        counts = await run_batch(
            items,
            output,
            address=stack.gateway_address,
            api_key=API_KEY,
            model=MODEL,
            concurrency=3,
            progress=False,
        )
    assert counts == {"skipped": 0, "ok": 6, "failed": 0}
    got = results(output)
    assert set(got) == {"q0", "q1", "q2", "q3", "q4", "6"}
    assert got["q0"]["completion_tokens"] == 3 and got["q0"]["finish_reason"] == "length"
    assert got["6"]["completion_tokens"] == 2 and got["6"]["request_id"]


async def test_an_interrupted_batch_resumes_where_it_stopped(redis_url, tmp_path, catalog):
    inputs, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_inputs(inputs, 8, max_tokens=15)
    items = read_inputs(inputs)
    engine = ScriptedEngine(step_delay_s=0.01)
    async with running_stack(redis_url, [engine], catalog) as stack:
        kwargs = dict(
            address=stack.gateway_address, api_key=API_KEY, model=MODEL, concurrency=2, progress=False
        )
        job = asyncio.create_task(run_batch(items, output, **kwargs))
        while not output.exists() or len(output.read_text().splitlines()) < 2:
            await asyncio.sleep(0.02)
        job.cancel()  # as Ctrl-C would
        await asyncio.gather(job, return_exceptions=True)
        first_run = completed_ids(output)
        assert 2 <= len(first_run) < 9
        with output.open("a") as f:
            f.write('{"id": "q7", "text": "torn')  # a crash mid-write
        counts = await run_batch(items, output, **kwargs)
    assert counts["skipped"] == len(first_run) and counts["ok"] == 9 - len(first_run)
    assert set(results(output)) == {i["id"] for i in items}
    lines = output.read_text().splitlines()
    assert len(lines) == 9, "no input ran twice, and the torn line was cut"
