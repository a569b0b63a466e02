"""Every outcome, end to end: a worker's engine ends a request with it, the worker's token-sink
client carries it to the gateway, and the gateway's client sees its gRPC status and finish
reason (gateway -> Redis -> scheduler -> worker -> token sink -> client, in-process, real Redis).
"""

from __future__ import annotations

import time

import grpc
import pytest

from llmserve.common.outcome import Outcome
from llmserve.common.tokensink.v1 import token_sink_pb2
from llmserve.gateway.routing.catalog import ModelCatalog
from llmserve.gateway.v1 import generation_pb2 as pb
from llmserve.gateway.v1 import generation_pb2_grpc
from llmserve.worker.engine.types import EngineRequest, TokenOutput
from tests.support.scripted_engine import ScriptedEngine
from tests.support.stack import API_KEY, MODEL, running_stack

AUTH = (("authorization", f"Bearer {API_KEY}"),)

# The outcome the engine ends a request with, chosen by its max_tokens.
ENDING = {3: Outcome.STOP, 4: Outcome.LENGTH, 5: Outcome.CANCELLED, 6: Outcome.ERROR, 7: Outcome.DEADLINE_EXCEEDED}


class EndingEngine(ScriptedEngine):
    """Makes one token per request, then ends it with the outcome its max_tokens names."""

    def step(self) -> list[TokenOutput]:
        time.sleep(self.step_delay_s)
        outputs = []
        with self._lock:
            for rid, (req, done) in list(self._running.items()):
                if done == 0:
                    outputs.append(self._out(req, [7], 0, None))
                    self._running[rid] = (req, 1)
                    continue
                outputs.append(self._ending(req))
                del self._running[rid]
        return outputs

    @staticmethod
    def _ending(req: EngineRequest) -> TokenOutput:
        outcome = ENDING[req.sampling.max_tokens]
        return TokenOutput(request_id=req.request_id, token_ids=[], text="", index=1, finished=True,
                           finish_reason=outcome, prompt_tokens=len(req.prompt_token_ids), completion_tokens=1,
                           error="the engine broke" if outcome is Outcome.ERROR else None)


@pytest.fixture(scope="module")
def catalog():
    return ModelCatalog.load([MODEL])


def test_the_outcome_enum_mirrors_the_proto():
    proto = token_sink_pb2.DESCRIPTOR.enum_types_by_name["Outcome"].values
    assert [o.name for o in Outcome] == [v.name.removeprefix("OUTCOME_") for v in proto]
    for value in token_sink_pb2.Outcome.values():
        assert Outcome.from_pb(value).to_pb() == value


async def test_each_outcome_reaches_the_client_as_its_status_and_finish_reason(redis_url, catalog):
    async with running_stack(redis_url, [EndingEngine()], catalog) as stack, \
            grpc.aio.insecure_channel(stack.gateway_address) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)

        async def outcome_of(max_tokens: int):
            request = pb.GenerateRequest(model=MODEL, prompt="Hello", max_tokens=max_tokens)
            try:
                messages = [m async for m in stub.GenerateStream(request, metadata=AUTH, timeout=10)]
            except grpc.aio.AioRpcError as e:
                return e.code(), e.details()
            return grpc.StatusCode.OK, messages[-1]

        code, last = await outcome_of(3)
        assert code == grpc.StatusCode.OK and last.finish_reason == pb.FINISH_REASON_STOP
        code, last = await outcome_of(4)
        assert code == grpc.StatusCode.OK and last.finish_reason == pb.FINISH_REASON_LENGTH
        assert last.usage.completion_tokens == 1
        code, details = await outcome_of(5)
        assert code == grpc.StatusCode.CANCELLED and "cancelled" in details
        code, details = await outcome_of(6)
        assert code == grpc.StatusCode.ABORTED and details == "the engine broke"
        code, details = await outcome_of(7)
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED and "deadline" in details

        whole = await stub.Generate(pb.GenerateRequest(model=MODEL, prompt="Hello", max_tokens=3),
                                    metadata=AUTH, timeout=10)
        assert whole.finish_reason == pb.FINISH_REASON_STOP and whole.text == "7 "
