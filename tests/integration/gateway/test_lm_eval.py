"""lm-evaluation-harness, unchanged, against the gateway, on task files shipped in the repo: a
loglikelihood task through `local-completions` (token-id prompts, `echo`, `logprobs`), whose
log-likelihoods equal a transformers forward pass on the same weights within 1e-3, and a
generate-until task through `local-chat-completions`, whose answers equal transformers' greedy
text for the same chat prompts."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from llmserve.gateway.routing.catalog import ModelCatalog
from llmserve.worker.engine.config import EngineConfig
from llmserve.worker.engine.llm_engine import LLMEngine
from tests.support.stack import API_KEY, MODEL, running_stack

lm_eval = pytest.importorskip("lm_eval")
TASK_DIR = Path(__file__).parents[2] / "data" / "lm_eval"


@pytest.fixture(scope="module")
def catalog():
    return ModelCatalog.load([MODEL])


def _task_dir(tmp_path: Path, name: str = "tiny_mc") -> Path:
    """The shipped task, its data file named by absolute path (datasets reads it from the cwd)."""
    text = (TASK_DIR / f"{name}.yaml").read_text().replace(f"{name}.jsonl", str(TASK_DIR / f"{name}.jsonl"))
    (tmp_path / f"{name}.yaml").write_text(text)
    return tmp_path


def _evaluate(base_url: str, tokenizer_path: str, task_dir: Path) -> dict:
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(
        model="local-completions",
        model_args=f"model={MODEL},base_url={base_url},tokenizer_backend=huggingface,tokenizer={tokenizer_path},"
                   "tokenized_requests=True,num_concurrent=1,max_retries=1",
        tasks=["llmserve_tiny_mc"], task_manager=TaskManager(include_path=str(task_dir)), log_samples=True,
    )


@pytest.fixture(scope="module")
def hf_model(catalog):
    """The served weights as a transformers model, loaded once for both lm-eval tests."""
    torch.set_num_threads(2)
    return AutoModelForCausalLM.from_pretrained(str(catalog.get(MODEL).path), dtype=torch.float32).eval()


def _fp32_engine(served, hf_model) -> LLMEngine:
    return LLMEngine.from_model(EngineConfig(model=served.path, device="cpu", num_kv_blocks=256), hf_model,
                                served.tokenizer)


async def test_local_completions_loglikelihood_matches_transformers(redis_url, catalog, hf_model, tmp_path,
                                                                   monkeypatch):
    served = catalog.get(MODEL)
    engine = _fp32_engine(served, hf_model)
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    async with running_stack(redis_url, [engine], catalog) as stack:
        base = f"http://127.0.0.1:{stack.gateway.service.http_port}/v1/completions"
        results = await asyncio.to_thread(_evaluate, base, str(served.path), _task_dir(tmp_path))
    samples = results["samples"]["llmserve_tiny_mc"]
    assert len(samples) == len((TASK_DIR / "tiny_mc.jsonl").read_text().splitlines())
    tok = served.tokenizer
    with torch.inference_mode():
        for sample in samples:
            for (context, continuation), resp in zip(sample["arguments"], sample["resps"], strict=True):
                # lm-eval's own split: encode the whole, the continuation is what follows the context.
                ctx = tok.encode(context)
                ids = tok.encode(context + continuation)
                lp = torch.log_softmax(hf_model(torch.tensor([ids])).logits[0].float(), dim=-1)
                want = sum(lp[i - 1, ids[i]].item() for i in range(len(ctx), len(ids)))
                assert abs(resp[0][0] - want) < 1e-3, (context, continuation, resp, want)
    assert 0.0 <= results["results"]["llmserve_tiny_mc"]["acc,none"] <= 1.0


def _evaluate_chat(base_url: str, task_dir: Path) -> dict:
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(
        model="local-chat-completions", model_args=f"model={MODEL},base_url={base_url},num_concurrent=1,max_retries=1",
        tasks=["llmserve_tiny_gen"], task_manager=TaskManager(include_path=str(task_dir)), log_samples=True,
        apply_chat_template=True,
    )


def _greedy_text(hf_model, served, eos: set[int], messages: list[dict], max_tokens: int, until: list[str]) -> str:
    """Transformers' greedy completion of the chat prompt, cut where the gateway cuts it."""
    prompt = served.encode_chat(messages)
    ids: list[int] = []
    with torch.inference_mode():
        for _ in range(max_tokens):
            token = int(hf_model(torch.tensor([prompt + ids])).logits[0, -1].argmax())
            if token in eos:
                break
            ids.append(token)
    text = served.tokenizer.decode(ids, skip_special_tokens=True)
    cuts = [text.index(s) for s in until if s in text]
    return text[: min(cuts)] if cuts else text


async def test_local_chat_completions_generate_until_answers_the_greedy_text(redis_url, catalog, hf_model, tmp_path,
                                                                             monkeypatch):
    served = catalog.get(MODEL)
    engine = _fp32_engine(served, hf_model)
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    async with running_stack(redis_url, [engine], catalog) as stack:
        base = f"http://127.0.0.1:{stack.gateway.service.http_port}/v1/chat/completions"
        results = await asyncio.to_thread(_evaluate_chat, base, _task_dir(tmp_path, "tiny_gen"))
    samples = results["samples"]["llmserve_tiny_gen"]
    assert len(samples) == len((TASK_DIR / "tiny_gen.jsonl").read_text().splitlines())
    for sample in samples:
        (context, gen_kwargs), = sample["arguments"]
        messages = json.loads(context[0])  # lm-eval's JsonChatStr: the chat it sends, as JSON
        assert messages[-1] == {"role": "user", "content": f"{sample['doc']['question']} Answer in one word."}
        want = _greedy_text(hf_model, served, set(engine.eos_token_ids), messages, gen_kwargs["max_gen_toks"], gen_kwargs["until"])
        assert want.strip() and sample["resps"] == [[want]], (messages, sample["resps"], want)
    assert 0.0 <= results["results"]["llmserve_tiny_gen"]["exact_match,none"] <= 1.0
