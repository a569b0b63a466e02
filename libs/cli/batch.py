"""`llmserve batch IN.jsonl -o OUT.jsonl`: an offline job through the suite, resumable.

Input: one JSON object a line with `prompt` (raw text) or `messages` (chat), an optional
`id` (default: the line number) and optional sampling fields (`max_tokens`, `temperature`,
`top_p`, `top_k`, `repetition_penalty`, `stop`, `seed`, `model`).

Output: one line per finished input, in completion order, `{"id", "request_id", "text",
"finish_reason", "prompt_tokens", "completion_tokens"}` or `{"id", "error": {...}}`. Every
line is flushed as it is written, so an interrupted job (Ctrl-C, crash, lost node) resumes
where it stopped when run again with the same output: ids that already have a result are
skipped, ids that ended in an error are tried again, and a half-written last line is cut.
The latest line for an id wins.

Batch work is idempotent, so the client runs with `on_accepted="new_id"`: a request whose
answer was lost with a gateway is run again rather than reported (see client/retry.py).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import grpc

from llmserve.client import AsyncClient, RetryPolicy

PARAMS = ("max_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "stop", "seed")


def read_inputs(path: Path) -> list[dict]:
    items = []
    with path.open() as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            item = json.loads(line)
            if "prompt" not in item and "messages" not in item:
                raise ValueError(f"{path}:{n}: needs `prompt` or `messages`")
            item.setdefault("id", str(n))
            item["id"] = str(item["id"])
            items.append(item)
    ids = [i["id"] for i in items]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: ids must be unique")
    return items


def completed_ids(path: Path) -> set[str]:
    """Ids with a result in an existing output; cuts a torn last line first."""
    if not path.exists():
        return set()
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
        path.write_bytes(data)
    done: dict[str, bool] = {}
    for line in data.decode().splitlines():
        if line.strip():
            record = json.loads(line)
            done[str(record["id"])] = "error" not in record
    return {i for i, ok in done.items() if ok}


async def _one(client: AsyncClient, item: dict, model: str) -> dict:
    params = {k: item[k] for k in PARAMS if k in item}
    try:
        result = await client.generate(
            item.get("model", model), item.get("prompt"), messages=item.get("messages"), **params
        )
    except grpc.RpcError as e:
        return {"id": item["id"], "error": {"code": e.code().name, "message": e.details()}}
    return {
        "id": item["id"],
        "request_id": result.request_id,
        "text": result.text,
        "finish_reason": result.finish_reason,
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
    }


async def run_batch(
    items: list[dict],
    output: Path,
    *,
    address: str,
    api_key: str | None,
    model: str,
    concurrency: int = 8,
    timeout: float = 600.0,
    progress: bool = True,
) -> dict[str, int]:
    """Run the items not done yet; returns counts {"skipped", "ok", "failed"}."""
    from tqdm import tqdm

    done = completed_ids(output)
    todo = [i for i in items if i["id"] not in done]
    counts = {"skipped": len(items) - len(todo), "ok": 0, "failed": 0}
    bar = tqdm(total=len(items), initial=counts["skipped"], unit="req", disable=not progress, file=sys.stderr)
    queue: asyncio.Queue[dict] = asyncio.Queue()
    for item in todo:
        queue.put_nowait(item)
    policy = RetryPolicy(max_attempts=8, on_accepted="new_id")
    async with AsyncClient(address, api_key=api_key, timeout=timeout, retry=policy) as client:
        with output.open("a") as out:

            async def worker() -> None:
                while not queue.empty():
                    record = await _one(client, queue.get_nowait(), model)
                    out.write(json.dumps(record, ensure_ascii=False) + "\n")
                    out.flush()  # a result written is a result kept, whatever happens next
                    counts["failed" if "error" in record else "ok"] += 1
                    bar.update(1)

            await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    bar.close()
    return counts


def run_batch_command(args) -> int:
    items = read_inputs(Path(args.input))
    counts = asyncio.run(
        run_batch(
            items,
            Path(args.output),
            address=args.address,
            api_key=args.api_key,
            model=args.model,
            concurrency=args.concurrency,
            timeout=args.timeout,
            progress=not args.no_progress,
        )
    )
    print(
        f"{counts['ok']} done, {counts['failed']} failed, {counts['skipped']} already done -> {args.output}",
        file=sys.stderr,
    )
    return 1 if counts["failed"] else 0
