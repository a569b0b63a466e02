"""`redis_min_replicas`: a request is accepted only once a replica holds it (Redis WAIT on the
connection that wrote it), so a failover cannot lose an accepted request. Real primary and
replica redis-servers."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis

from llmserve.cli.redis_server import RedisServer
from llmserve.common import redis_client
from llmserve.common import redis_keys as keys
from llmserve.common.errors import Unavailable
from llmserve.gateway.admission.validation import Job, Sampling
from llmserve.gateway.streams.request_queue import RequestQueue

MODEL = "m"


def job(request_id: str) -> Job:
    sampling = Sampling(max_tokens=4, temperature=0.0, top_p=1.0, top_k=0, repetition_penalty=1.0,
                        stop=(), seed=None)
    return Job(request_id=request_id, tenant="t", model=MODEL, prompt_token_ids=[1, 2], sampling=sampling,
               priority=0)


@pytest.fixture
def primary_and_replica(tmp_path):
    primary = RedisServer(data_dir=tmp_path / "primary", extra_args=("--repl-diskless-sync-delay", "0")).start()
    replica = RedisServer(data_dir=tmp_path / "replica",
                          extra_args=("--replicaof", "127.0.0.1", str(primary.port))).start()
    try:
        yield primary, replica
    finally:
        replica.stop()
        primary.stop()


async def _until_in_sync(replica: RedisServer) -> None:
    client = aioredis.Redis.from_url(replica.url)
    deadline = time.monotonic() + 10
    try:
        while (await client.info("replication")).get("master_link_status") != "up":
            assert time.monotonic() < deadline, "the replica never finished its first sync"
            await asyncio.sleep(0.05)
    finally:
        await client.aclose()


async def test_an_enqueue_is_accepted_once_the_replica_has_it(primary_and_replica):
    primary, replica = primary_and_replica
    client = redis_client.connect(primary.url, socket_timeout=2)
    on_replica = aioredis.Redis.from_url(replica.url)
    try:
        await _until_in_sync(replica)
        queue = RequestQueue(client, 100, min_replicas=1, replica_wait_ms=1000)
        await queue.enqueue(job("r1"), int(time.time() * 1000) + 60_000)
        # Accepted means replicated: the replica holds the entry and the record right now.
        assert await on_replica.xlen(keys.request_stream(MODEL)) == 1
        assert await on_replica.exists(keys.request_key("r1"))
    finally:
        await client.aclose()
        await on_replica.aclose()


async def test_without_a_replica_the_request_is_refused_and_cancelled(primary_and_replica):
    primary, replica = primary_and_replica
    client = redis_client.connect(primary.url, socket_timeout=2)
    try:
        await _until_in_sync(replica)
        replica.stop_process()
        queue = RequestQueue(client, 100, min_replicas=1, replica_wait_ms=50)
        with pytest.raises(Unavailable, match="redis_min_replicas"):
            await queue.enqueue(job("r2"), int(time.time() * 1000) + 60_000)
        assert await client.exists(keys.cancel_key("r2")), "the unaccepted request must not run"
        plain = RequestQueue(client, 100)  # the default: accepted once the primary has it
        await plain.enqueue(job("r3"), int(time.time() * 1000) + 60_000)
    finally:
        await client.aclose()
