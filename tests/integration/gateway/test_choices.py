"""`n` > 1 and prompt lists over HTTP with the official `openai` SDK (scripted engine: token i of
a request is "<last prompt id + i + 1> ")."""

from __future__ import annotations

import openai
import pytest

from llmserve.gateway.admission.validation import GenerateParams
from llmserve.gateway.choices import choice_seed, expand
from llmserve.gateway.routing.catalog import ModelCatalog
from tests.support.scripted_engine import ScriptedEngine
from tests.support.stack import API_KEY, MODEL, running_stack


@pytest.fixture(scope="module")
def catalog():
    return ModelCatalog.load([MODEL])


def test_expand_orders_choices_and_derives_seeds():
    params = GenerateParams(model=MODEL, request_id="r", seed=5)
    out = expand(params, ["a", [7, 8]], 2)
    assert [p.request_id for p in out] == ["r.0", "r.1", "r.2", "r.3"]
    assert [p.fork_of for p in out] == ["", "r.0", "", "r.2"]
    assert [p.seed for p in out] == [5, choice_seed(5, 1), 5, choice_seed(5, 1)]
    assert (out[0].prompt, out[2].prompt_token_ids) == ("a", [7, 8])
    assert len({choice_seed(5, c) for c in range(16)}) == 16
    unseeded = expand(GenerateParams(model=MODEL, request_id="u"), None, 3)
    assert len({p.seed for p in unseeded}) == 3
    assert expand(params, None, 1) == [params]


async def test_n_and_prompt_lists_give_one_indexed_choice_each(redis_url, catalog):
    tok = catalog.get(MODEL)
    async with running_stack(redis_url, [ScriptedEngine()], catalog) as stack:
        base = f"http://127.0.0.1:{stack.gateway.service.http_port}/v1"
        client = openai.AsyncOpenAI(base_url=base, api_key=API_KEY, max_retries=0)
        chat = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                                                    max_tokens=3, n=3)
        assert [c.index for c in chat.choices] == [0, 1, 2]
        assert all(len(c.message.content.split()) == 3 for c in chat.choices)
        assert chat.usage.completion_tokens == 9
        assert chat.usage.prompt_tokens == len(tok.encode_chat([{"role": "user", "content": "Hi"}]))

        ids = tok.encode_prompt("Hello")
        listed = await client.completions.create(model=MODEL, prompt=["Hello", "Bye there"], max_tokens=2)
        assert [c.index for c in listed.choices] == [0, 1]
        assert listed.choices[0].text.split()[0] == str((ids[-1] + 1) % 1000)
        by_ids = await client.completions.create(model=MODEL, prompt=[ids, [5, 6, 41]], max_tokens=2, n=2)
        assert [c.index for c in by_ids.choices] == [0, 1, 2, 3]
        assert [c.text.split()[0] for c in by_ids.choices] == [str((ids[-1] + 1) % 1000)] * 2 + ["42"] * 2
        assert by_ids.usage.prompt_tokens == len(ids) + 3 and by_ids.usage.completion_tokens == 8
        single = await client.completions.create(model=MODEL, prompt=[5, 6, 41], max_tokens=1)
        assert single.choices[0].text.split() == ["42"]

        stream = await client.completions.create(model=MODEL, prompt=["a", "b"], max_tokens=3, n=2, stream=True,
                                                 stream_options={"include_usage": True})
        chunks = [c async for c in stream]
        texts: dict[int, str] = {}
        finishes = {}
        for c in chunks:
            for choice in c.choices:
                texts[choice.index] = texts.get(choice.index, "") + choice.text
                if choice.finish_reason:
                    finishes[choice.index] = choice.finish_reason
        assert sorted(texts) == [0, 1, 2, 3] and all(len(t.split()) == 3 for t in texts.values())
        assert finishes == {i: "length" for i in range(4)}
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12

        chat_stream = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2, n=2, stream=True)
        roles = [ch.index for c in [x async for x in chat_stream] for ch in c.choices if ch.delta.role]
        assert roles == [0, 1]

        for kwargs, param in (({"n": 0}, "n"), ({"n": 17}, "n"), ({"prompt": []}, "prompt"),
                              ({"prompt": [[1, 2], "x"]}, "prompt"), ({"prompt": [10**9]}, "prompt")):
            body = {"prompt": "Hello"} | kwargs
            with pytest.raises(openai.BadRequestError) as caught:
                await client.completions.create(model=MODEL, max_tokens=2, **body)
            assert caught.value.param == param, (kwargs, caught.value.body)
