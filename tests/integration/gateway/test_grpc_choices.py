"""`n` > 1 and prompt lists over the public gRPC API (real gateway, scheduler and worker servers,
real Redis; scripted engine: token i of a request is "<last prompt id + i + 1> ")."""

from __future__ import annotations

import grpc
import pytest

from llmserve.client import AsyncClient
from llmserve.gateway.choices import choice_seed
from llmserve.gateway.routing.catalog import ModelCatalog
from llmserve.gateway.v1 import generation_pb2 as pb
from llmserve.gateway.v1 import generation_pb2_grpc
from tests.support.scripted_engine import ScriptedEngine
from tests.support.stack import API_KEY, MODEL, running_stack

AUTH = (("authorization", f"Bearer {API_KEY}"),)


class RecordingEngine(ScriptedEngine):
    """Keeps every request it was given (to see the seeds and forks that reached the engine)."""

    def __init__(self):
        super().__init__()
        self.requests = {}

    def add_request(self, request):
        self.requests[request.request_id] = request
        super().add_request(request)


@pytest.fixture(scope="module")
def catalog():
    return ModelCatalog.load([MODEL])


def _prompts(*items) -> pb.PromptList:
    return pb.PromptList(prompts=[pb.Prompt(text=p) if isinstance(p, str) else pb.Prompt(token_ids=pb.TokenIds(ids=p))
                                  for p in items])


async def test_grpc_n_and_prompt_lists_stream_and_answer_one_indexed_choice_each(redis_url, catalog):
    tok = catalog.get(MODEL)
    engine = RecordingEngine()
    async with running_stack(redis_url, [engine], catalog) as stack, grpc.aio.insecure_channel(stack.gateway_address) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        ids = tok.encode_prompt("Hello")
        request = pb.GenerateRequest(model=MODEL, prompts=_prompts("Hello", [5, 6, 41]), n=2, max_tokens=3,
                                     seed=9, request_id="g1")
        texts: dict[int, str] = {}
        next_index: dict[int, int] = {}
        finishes: dict[int, pb.GenerateStreamResponse] = {}
        async for m in stub.GenerateStream(request, metadata=AUTH):
            assert m.request_id == "g1" and m.choice_index not in finishes
            if m.token_ids:  # indexes are contiguous per choice
                assert m.index == next_index.get(m.choice_index, 0)
                next_index[m.choice_index] = m.index + len(m.token_ids)
            texts[m.choice_index] = texts.get(m.choice_index, "") + m.text
            if m.finish_reason:
                finishes[m.choice_index] = m
        first = str((ids[-1] + 1) % 1000)
        assert [texts[i].split()[0] for i in range(4)] == [first, first, "42", "42"]
        assert all(len(t.split()) == 3 for t in texts.values())
        assert {i: f.finish_reason for i, f in finishes.items()} == {i: pb.FINISH_REASON_LENGTH for i in range(4)}
        assert [finishes[i].usage.prompt_tokens for i in range(4)] == [len(ids)] * 2 + [3] * 2
        # Each choice is its own generation; a prompt's later choices fork its choice 0.
        sent = {f"g1.{i}": engine.requests[f"g1.{i}"] for i in range(4)}
        assert [r.fork_of for r in sent.values()] == ["", "g1.0", "", "g1.2"]
        assert [r.sampling.seed for r in sent.values()] == [9, choice_seed(9, 1)] * 2

        whole = await stub.Generate(pb.GenerateRequest(model=MODEL, prompts=_prompts([5, 6, 41], "Bye"),
                                                       max_tokens=2, n=2), metadata=AUTH)
        assert [c.index for c in whole.choices] == [0, 1, 2, 3]
        assert [c.text.split()[0] for c in whole.choices][:2] == ["42", "42"]
        assert whole.text == whole.choices[0].text and whole.finish_reason == pb.FINISH_REASON_LENGTH
        bye = len(tok.encode_prompt("Bye"))
        assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (3 + bye, 8)
        assert [c.usage.completion_tokens for c in whole.choices] == [2] * 4

        chat = await stub.Generate(pb.GenerateRequest(
            model=MODEL, messages=pb.ChatMessages(messages=[pb.ChatMessage(role="user", content="Hi")]),
            max_tokens=2, n=3), metadata=AUTH)
        assert len(chat.choices) == 3 and chat.usage.completion_tokens == 6
        assert chat.usage.prompt_tokens == len(tok.encode_chat([{"role": "user", "content": "Hi"}]))
        single = await stub.Generate(pb.GenerateRequest(model=MODEL, prompt="Hello", max_tokens=2), metadata=AUTH)
        assert len(single.choices) == 1 and single.choices[0].text == single.text

        bad = [pb.GenerateRequest(model=MODEL, prompt="x", n=17),
               pb.GenerateRequest(model=MODEL, prompts=pb.PromptList()),
               pb.GenerateRequest(model=MODEL, prompts=pb.PromptList(prompts=[pb.Prompt()])),
               pb.GenerateRequest(model=MODEL, prompts=_prompts([10**9])),
               pb.GenerateRequest(model=MODEL, prompt="x", n=2, request_id="g1", resume_from_index=0)]
        for b in bad:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Generate(b, metadata=AUTH)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, b


async def test_the_python_client_asks_for_several_choices(redis_url, catalog):
    async with running_stack(redis_url, [ScriptedEngine()], catalog) as stack, AsyncClient(stack.gateway_address, api_key=API_KEY) as client:
        whole = await client.generate(MODEL, prompts=["Hello", [5, 6, 41]], n=2, max_tokens=2)
        assert [c.index for c in whole.choices] == [0, 1, 2, 3] and whole.completion_tokens == 8
        assert [c.text.split()[0] for c in whole.choices][2:] == ["42", "42"]
        pieces = [p async for p in client.stream(MODEL, prompts=[[5, 6, 41]], n=3, max_tokens=2)]
        by_choice: dict[int, str] = {}
        for p in pieces:
            by_choice[p.choice_index] = by_choice.get(p.choice_index, "") + p.text
        assert by_choice == {i: "42 43 " for i in range(3)}
        assert sorted(p.choice_index for p in pieces if p.finish_reason) == [0, 1, 2]
