"""Helpers that put requests straight onto Redis streams, as a gateway would."""

from __future__ import annotations

import time

import redis.asyncio as aioredis

from llmserve.common import redis_keys as keys
from llmserve.common.v1 import work_pb2

MODEL = "SmolLM2-135M-Instruct"


def work_item(request_id: str, *, tenant: str = "t", priority: int = 2, max_tokens: int = 2,
              deadline_ms: int = 0, reply_to: str = "127.0.0.1:9") -> work_pb2.WorkItem:
    return work_pb2.WorkItem(
        request_id=request_id, tenant=tenant, model=MODEL, prompt_token_ids=[1, 2, 3],
        sampling=work_pb2.SamplingParams(max_tokens=max_tokens, temperature=0.0, top_p=1.0,
                                         repetition_penalty=1.0),
        deadline_unix_ms=deadline_ms, priority=priority, reply_to=reply_to, attempt=1,
        enqueued_unix_ms=int(time.time() * 1000),
    )


async def enqueue(r: aioredis.Redis, items: list[work_pb2.WorkItem]) -> None:
    pipe = r.pipeline(transaction=False)
    for item in items:
        pipe.xadd(keys.request_stream(item.model), {keys.PAYLOAD_FIELD: item.SerializeToString()})
        pipe.hset(keys.request_key(item.request_id), mapping={"state": "queued", "attempt": 1})
    await pipe.execute()
