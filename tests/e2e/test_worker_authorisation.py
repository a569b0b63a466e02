"""Real processes, two workers, internal auth on (as `llmserve up` runs it): a worker's
credential cannot fence, read or inject tokens into a request placed on the other worker; the
victim's completion is untouched."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
import redis

from llmserve.cli.redis_server import RedisServer
from llmserve.cli.suite import LocalSuite, Ports
from llmserve.client import Client
from llmserve.common import redis_keys as keys
from llmserve.common.internal_auth import InternalAuth, mint_token
from llmserve.common.model_store import DEFAULT_MODEL
from llmserve.common.tokensink.v1 import token_sink_pb2 as pb
from llmserve.common.tokensink.v1 import token_sink_pb2_grpc

INJECTED = "<INJECTED-BY-ATTACKER>"


def victim_stream(suite: LocalSuite, out: dict) -> None:
    try:
        with Client(f"127.0.0.1:{suite.ports.gateway}", api_key=suite.api_key, timeout=180) as client:
            for piece in client.stream(DEFAULT_MODEL, "Once upon a time", temperature=0.0, max_tokens=96,
                                       request_id="victim-1"):
                out.setdefault("indexes", []).extend(range(piece.index, piece.index + len(piece.token_ids)))
                out["text"] = out.get("text", "") + piece.text
                out["finish"] = piece.finish_reason or out.get("finish")
    except grpc.RpcError as e:
        out["error"] = f"{e.code().name}: {e.details()}"


def wait_placed(r: redis.Redis, out: dict) -> dict[str, str]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        record = {k.decode(): v.decode() for k, v in r.hgetall(keys.request_key("victim-1")).items()}
        if record.get("worker") and len(out.get("indexes", [])) >= 2:
            return record
        time.sleep(0.02)
    raise AssertionError(f"victim never ran: {out}")


def attack(sink: str, token: str, owner: str, claimed: str) -> tuple[grpc.StatusCode, grpc.StatusCode]:
    """Fence the victim, then stream forged chunks into it, with `token`."""
    with InternalAuth(token=token).channel(sink) as channel:
        stub = token_sink_pb2_grpc.TokenSinkServiceStub(channel)
        try:
            stub.Fence(pb.FenceRequest(request_id="victim-1", attempt=99), timeout=5)
            fence = grpc.StatusCode.OK
        except grpc.RpcError as e:
            fence = e.code()
        chunks = [pb.TokenChunk(request_id="victim-1", attempt=1, index=i, token_ids=[1], text=INJECTED,
                                worker_id=worker) for i in range(2, 6) for worker in (claimed, owner)]
        chunks.append(pb.TokenChunk(request_id="victim-1", attempt=1, index=6, outcome=pb.OUTCOME_STOP,
                                    worker_id=claimed, completion_tokens=7))
        replies = stub.StreamTokens(iter([pb.StreamTokensRequest(chunks=chunks)]), timeout=5)
        try:
            for _ in replies:
                pass
            stream = grpc.StatusCode.OK  # accepted, its chunks dropped
        except grpc.RpcError as e:
            stream = e.code()
    return fence, stream


@pytest.mark.timeout(600)
def test_a_worker_cannot_touch_a_request_placed_on_another(tmp_path):
    with RedisServer() as server:
        suite = LocalSuite(ports=Ports.free(), redis_url=server.url, log_dir=tmp_path, with_monitor=False, workers=2)
        r = redis.Redis.from_url(server.url)
        try:
            suite.start(timeout=240)
            out: dict = {}
            thread = threading.Thread(target=victim_stream, args=(suite, out))
            thread.start()
            record = wait_placed(r, out)
            owner, sink = record["worker"], record["gateway"]
            workers = {f"worker-{s.port}" for s in suite.services if s.name.startswith("worker")}
            assert owner in workers and len(workers) == 2
            (other,) = workers - {owner}
            other_token = mint_token(suite.internal_secret, "worker", other)
            denied, unauth, ok = (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED,
                                  grpc.StatusCode.OK)
            assert attack(sink, other_token, owner, claimed=other) == (denied, ok)
            # Claiming the owner's id on the chunks does not help: the credential says who it is.
            assert attack(sink, other_token, owner, claimed=owner) == (denied, ok)
            gateway_token = mint_token(suite.internal_secret, "gateway", "g")
            assert attack(sink, gateway_token, owner, claimed=owner) == (denied, denied)
            forged = mint_token("not-this-run", "worker", owner)
            assert attack(sink, forged, owner, claimed=owner) == (unauth, unauth)
            thread.join(180)
            assert "error" not in out, out
            assert INJECTED not in out["text"], out["text"]
            assert out["indexes"] == list(range(len(out["indexes"]))) and len(out["indexes"]) > 6
            assert out["finish"]
        finally:
            r.close()
            suite.stop()
