"""Sampling controls and log probabilities through the whole stack with the real model.

The official `openai` SDK over HTTP (and one gRPC call) against gateway -> Redis -> scheduler
-> worker -> LLMEngine on SmolLM2-135M (CPU); the log probabilities are checked against a
transformers forward pass on the same weights.
"""

from __future__ import annotations

import grpc
import openai
import pytest
import torch
from transformers import AutoModelForCausalLM

from llmserve.gateway.routing.catalog import ModelCatalog
from llmserve.gateway.v1 import generation_pb2 as pb
from llmserve.gateway.v1 import generation_pb2_grpc
from llmserve.worker.engine.config import EngineConfig
from llmserve.worker.engine.llm_engine import LLMEngine
from tests.support.stack import API_KEY, MODEL, running_stack

MESSAGES = [{"role": "user", "content": "Name three primary colors."}]
N_TOKENS = 6


@pytest.fixture(scope="module")
def catalog():
    return ModelCatalog.load([MODEL])


@pytest.fixture(scope="module")
def hf_model(catalog):
    torch.set_num_threads(2)
    return AutoModelForCausalLM.from_pretrained(str(catalog.get(MODEL).path), dtype=torch.float32).eval()


def real_engine(catalog, hf_model) -> LLMEngine:
    served = catalog.get(MODEL)
    return LLMEngine.from_model(EngineConfig(model=served.path, device="cpu", num_kv_blocks=256), hf_model,
                                served.tokenizer)


def reference(hf_model, prompt_ids: list[int], n: int) -> tuple[list[int], torch.Tensor]:
    """Greedy ids and the log-softmax each was drawn from, by plain transformers forwards."""
    ids: list[int] = []
    with torch.inference_mode():
        for _ in range(n):
            ids.append(int(hf_model(torch.tensor([prompt_ids + ids])).logits[0, -1].argmax()))
        logits = hf_model(torch.tensor([prompt_ids + ids])).logits[0, len(prompt_ids) - 1 : -1].float()
    return ids, torch.log_softmax(logits, dim=-1)


async def test_chat_and_completion_logprobs_match_transformers(redis_url, catalog, hf_model):
    served = catalog.get(MODEL)
    tok = served.tokenizer
    async with running_stack(redis_url, [real_engine(catalog, hf_model)], catalog) as stack:
        base = f"http://127.0.0.1:{stack.gateway.service.http_port}/v1"
        client = openai.AsyncOpenAI(base_url=base, api_key=API_KEY, max_retries=0, timeout=120)
        ids, ref = reference(hf_model, served.encode_chat(MESSAGES), N_TOKENS)
        whole = await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=N_TOKENS,
                                                     temperature=0, logprobs=True, top_logprobs=3)
        content = whole.choices[0].logprobs.content
        assert [c.token for c in content] == [tok.decode([i]) for i in ids]
        for i, c in enumerate(content):
            assert abs(c.logprob - ref[i, ids[i]].item()) < 1e-3
            top_v, top_i = ref[i].topk(3)
            assert [t.token for t in c.top_logprobs] == [tok.decode([t]) for t in top_i.tolist()]
            assert max(abs(t.logprob - v) for t, v in zip(c.top_logprobs, top_v.tolist(), strict=True)) < 1e-3
        stream = await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=N_TOKENS,
                                                      temperature=0, logprobs=True, top_logprobs=3, stream=True)
        streamed = [c for chunk in [x async for x in stream] if chunk.choices and chunk.choices[0].logprobs
                    for c in chunk.choices[0].logprobs.content]
        assert [(c.token, round(c.logprob, 4)) for c in streamed] == [(c.token, round(c.logprob, 4)) for c in content]

        prompt = "The capital of France is"
        ids, ref = reference(hf_model, served.encode_prompt(prompt), N_TOKENS)
        text = await client.completions.create(model=MODEL, prompt=prompt, max_tokens=N_TOKENS, temperature=0,
                                               logprobs=2)
        lp = text.choices[0].logprobs
        assert lp.tokens == [tok.decode([i]) for i in ids]
        assert max(abs(v - ref[i, ids[i]].item()) for i, v in enumerate(lp.token_logprobs)) < 1e-3
        assert all(len(top) == 2 for top in lp.top_logprobs)
        assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
        plain = await client.completions.create(model=MODEL, prompt=prompt, max_tokens=2, temperature=0)
        assert plain.choices[0].logprobs is None


async def test_penalties_bias_and_stop_ids_reach_the_engine(redis_url, catalog, hf_model):
    served = catalog.get(MODEL)
    async with running_stack(redis_url, [real_engine(catalog, hf_model)], catalog) as stack:
        base = f"http://127.0.0.1:{stack.gateway.service.http_port}/v1"
        client = openai.AsyncOpenAI(base_url=base, api_key=API_KEY, max_retries=0, timeout=120)
        ids, _ = reference(hf_model, served.encode_chat(MESSAGES), 3)
        biased = await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=3, temperature=0,
                                                      logit_bias={str(ids[0]): -100}, logprobs=True)
        assert biased.choices[0].logprobs.content[0].token != served.tokenizer.decode([ids[0]])
        stopped = await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=6, temperature=0,
                                                       extra_body={"stop_token_ids": [ids[1]]})
        assert stopped.choices[0].finish_reason == "stop" and stopped.usage.completion_tokens == 2
        penalised = await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=3,
                                                         temperature=0, presence_penalty=2.0, frequency_penalty=2.0)
        assert penalised.usage.completion_tokens == 3
        for body, param in (({"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
                            ({"top_logprobs": 2}, "top_logprobs"), ({"presence_penalty": 2.5}, "presence_penalty"),
                            ({"logit_bias": {"x": 1}}, "logit_bias"), ({"logit_bias": {"5": 101}}, "logit_bias"),
                            ({"min_tokens": 9}, "min_tokens"), ({"min_p": 1.5}, "min_p")):
            with pytest.raises(openai.BadRequestError) as caught:
                await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=3,
                                                     extra_body=body)
            assert caught.value.param == param, (body, caught.value.body)
        with pytest.raises(openai.BadRequestError) as caught:
            await client.completions.create(model=MODEL, prompt="x", max_tokens=2, logprobs=6)
        assert caught.value.param == "logprobs"

        async with grpc.aio.insecure_channel(stack.gateway_address) as channel:
            stub = generation_pb2_grpc.GenerationServiceStub(channel)
            reply = await stub.Generate(pb.GenerateRequest(model=MODEL, prompt="The capital of France is",
                                                           max_tokens=3, temperature=0, logprobs=True,
                                                           top_logprobs=2),
                                        metadata=(("authorization", f"Bearer {API_KEY}"),))
            assert len(reply.logprobs) == 3 and all(len(lp.top_logprobs) == 2 for lp in reply.logprobs)
            assert reply.logprobs[0].top_logprobs[0].logprob >= reply.logprobs[0].top_logprobs[1].logprob


async def test_n_choices_with_a_seed_differ_reproduce_and_share_the_prompt(redis_url, catalog, hf_model):
    served = catalog.get(MODEL)
    engine = LLMEngine.from_model(EngineConfig(model=served.path, device="cpu", num_kv_blocks=256,
                                               enable_prefix_caching=False), hf_model, served.tokenizer)
    prompt_len = len(served.encode_chat(MESSAGES))
    async with running_stack(redis_url, [engine], catalog) as stack:
        base = f"http://127.0.0.1:{stack.gateway.service.http_port}/v1"
        client = openai.AsyncOpenAI(base_url=base, api_key=API_KEY, max_retries=0, timeout=120)

        async def ask():
            reply = await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5, n=4,
                                                         seed=7, temperature=1.0)
            return [c.message.content for c in reply.choices], reply.usage

        first, usage = await ask()
        prefill = engine.step_totals.prefill_tokens
        again, _ = await ask()
        assert len(set(first)) == 4 and again == first
        assert usage.prompt_tokens == prompt_len and usage.completion_tokens == 20
        # Choices 1-3 computed only the prompt's last partial block, not the whole prompt.
        bs = engine.block_manager.block_size
        assert prefill == prompt_len + 3 * (prompt_len - (prompt_len - 1) // bs * bs)


async def test_grpc_n_choices_with_a_seed_differ_reproduce_and_share_the_prompt(redis_url, catalog, hf_model):
    served = catalog.get(MODEL)
    engine = LLMEngine.from_model(EngineConfig(model=served.path, device="cpu", num_kv_blocks=256,
                                               enable_prefix_caching=False), hf_model, served.tokenizer)
    prompt_len = len(served.encode_chat(MESSAGES))
    messages = pb.ChatMessages(messages=[pb.ChatMessage(**m) for m in MESSAGES])
    async with running_stack(redis_url, [engine], catalog) as stack, grpc.aio.insecure_channel(stack.gateway_address) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        request = pb.GenerateRequest(model=MODEL, messages=messages, max_tokens=5, n=4, seed=7, temperature=1.0)
        first = await stub.Generate(request, metadata=(("authorization", f"Bearer {API_KEY}"),))
        prefill = engine.step_totals.prefill_tokens
        pieces: dict[int, list[int]] = {}
        async for m in stub.GenerateStream(request, metadata=(("authorization", f"Bearer {API_KEY}"),)):
            pieces.setdefault(m.choice_index, []).extend(m.token_ids)
    texts = [c.text for c in first.choices]
    assert len(set(texts)) == 4 and [served.tokenizer.decode(pieces[i]) for i in range(4)] == texts
    assert (first.usage.prompt_tokens, first.usage.completion_tokens) == (prompt_len, 20)
    # Choices 1-3 computed only the prompt's last partial block, not the whole prompt.
    bs = engine.block_manager.block_size
    assert prefill == prompt_len + 3 * (prompt_len - (prompt_len - 1) // bs * bs)


async def test_echo_scores_a_token_id_prompt_like_lm_eval_does(redis_url, catalog, hf_model):
    served = catalog.get(MODEL)
    ids = served.encode_prompt("The capital of France is Paris")
    with torch.inference_mode():
        ref = torch.log_softmax(hf_model(torch.tensor([ids])).logits[0].float(), dim=-1)
    async with running_stack(redis_url, [real_engine(catalog, hf_model)], catalog) as stack:
        base = f"http://127.0.0.1:{stack.gateway.service.http_port}/v1"
        client = openai.AsyncOpenAI(base_url=base, api_key=API_KEY, max_retries=0, timeout=120)
        scored = await client.completions.create(model=MODEL, prompt=[ids], max_tokens=0, echo=True, logprobs=1,
                                                 temperature=0)
        lp = scored.choices[0].logprobs
        assert scored.choices[0].text == served.tokenizer.decode(ids) and scored.usage.completion_tokens == 0
        assert len(lp.token_logprobs) == len(ids) and lp.token_logprobs[0] is None
        assert max(abs(v - ref[i, ids[i + 1]].item()) for i, v in enumerate(lp.token_logprobs[1:])) < 1e-3
        assert lp.tokens == [served.tokenizer.decode([t]) for t in ids]
        stream = await client.completions.create(model=MODEL, prompt="Hello", max_tokens=2, echo=True,
                                                 logprobs=0, temperature=0, stream=True)
        chunks = [c async for c in stream]
        text = "".join(ch.text for c in chunks for ch in c.choices)
        assert text.startswith("Hello") and len(text) > len("Hello")
        values = [v for c in chunks for ch in c.choices if ch.logprobs for v in ch.logprobs.token_logprobs]
        assert values[0] is None and len(values) == len(served.encode_prompt("Hello")) + 2
        with pytest.raises(openai.BadRequestError) as caught:
            await client.completions.create(model=MODEL, prompt="Hello", max_tokens=0)
        assert caught.value.param == "max_tokens"
        plain_echo = await client.completions.create(model=MODEL, prompt="Hello", max_tokens=1, echo=True,
                                                     temperature=0)
        assert plain_echo.choices[0].text.startswith("Hello") and plain_echo.choices[0].logprobs is None


async def test_best_of_returns_the_candidates_with_the_highest_logprob_per_token(redis_url, catalog, hf_model):
    """best_of forks best_of candidates (seeded like n of them) and returns the n most likely."""
    async with running_stack(redis_url, [real_engine(catalog, hf_model)], catalog) as stack:
        base = f"http://127.0.0.1:{stack.gateway.service.http_port}/v1"
        client = openai.AsyncOpenAI(base_url=base, api_key=API_KEY, max_retries=0, timeout=120)
        ask = {"model": MODEL, "prompt": "The weather today is", "max_tokens": 5, "temperature": 1.0, "seed": 11}
        candidates = await client.completions.create(n=4, logprobs=0, **ask)
        score = {c.text: sum(c.logprobs.token_logprobs) / len(c.logprobs.token_logprobs)
                 for c in candidates.choices}
        assert len(score) == 4
        ranked = sorted(score, key=score.__getitem__, reverse=True)
        best = await client.completions.create(n=2, best_of=4, **ask)
        assert [c.text for c in best.choices] == ranked[:2] and [c.index for c in best.choices] == [0, 1]
        assert all(c.logprobs is None for c in best.choices)  # ranked by logprobs nobody asked to see
        assert best.usage.completion_tokens == candidates.usage.completion_tokens  # every candidate counts
        assert best.usage.prompt_tokens == candidates.usage.prompt_tokens
        shown = await client.completions.create(best_of=4, logprobs=1, **ask)
        assert [c.text for c in shown.choices] == ranked[:1] and len(shown.choices[0].logprobs.top_logprobs[0]) == 1
        for extra in ({"n": 2, "best_of": 1}, {"best_of": 2, "stream": True}, {"best_of": 17}):
            with pytest.raises(openai.BadRequestError) as caught:
                await client.completions.create(**(ask | extra))
            assert caught.value.param == "best_of", (extra, caught.value.body)
