"""CPU thread counts by step size (`threads.StepThreads`): big steps get every core, and in
the packed modes the switch never changes a result (exact resume depends on it)."""

from __future__ import annotations

import pytest
import torch

from llmserve.common.model_store import source_gguf
from llmserve.worker.engine import threads
from llmserve.worker.engine.config import EngineConfig
from llmserve.worker.engine.llm_engine import LLMEngine
from llmserve.worker.engine.types import EngineRequest
from tests.unit.worker.engine.engine_helpers import PROMPTS, chat_ids, greedy

needs_two_cores = pytest.mark.skipif(threads.usable_cores() < 2, reason="one usable core: nothing to switch")


def test_small_steps_get_the_small_count_and_big_steps_every_core():
    policy = threads.StepThreads(small=1, large=2, large_from_tokens=8)
    assert [policy.for_tokens(n) for n in (1, 4, 7, 8, 16, 512)] == [1, 1, 1, 2, 2, 2]
    before = torch.get_num_threads()
    try:
        threads.StepThreads.use(1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_small_step_candidates_leave_a_core_free(monkeypatch):
    for cores, expected in ((1, [1]), (2, [1]), (4, [1, 2, 3]), (32, list(range(1, 9)))):
        monkeypatch.setattr(threads, "usable_cores", lambda cores=cores: cores)
        assert threads.small_step_candidates() == expected, cores


def _real_int4_engine(model_dir, **config) -> LLMEngine:
    if source_gguf(model_dir) is None:
        pytest.skip("the bundled GGUF is not installed")
    return LLMEngine.from_config(EngineConfig(model=model_dir, quantization="int4", num_kv_blocks=256,
                                              enable_prefix_caching=False, **config))


@needs_two_cores
def test_auto_threads_run_big_work_on_every_core(model_dir, tokenizer):
    engine = _real_int4_engine(model_dir, num_threads="auto")
    model = engine.runner.model
    policy = model.threads
    assert policy is not None and policy.large == threads.usable_cores()
    seen = []  # (rows, threads, is the vocabulary projection) per matmul
    mm = model._mm

    def spy(x, w, bias=None):
        seen.append((x.shape[0], torch.get_num_threads(), w is model.lm_head))
        return mm(x, w, bias)

    model._mm = spy
    engine.add_request(EngineRequest("a", chat_ids(tokenizer, PROMPTS[0]), greedy(3)))
    while engine.has_unfinished():
        engine.step()
    prompt_rows = seen[0][0]
    assert prompt_rows >= policy.large_from_tokens
    layers = {(rows, n) for rows, n, lm in seen if not lm}
    assert layers == {(prompt_rows, policy.large), (1, policy.small)}  # the prompt, then decodes
    assert {(rows, n) for rows, n, lm in seen if lm} == {(1, policy.large)}


@needs_two_cores
def test_thread_count_never_changes_an_int4_step(model_dir, tokenizer):
    """The same step (a prefill chunk and decodes together) computed on 1 and on 2 threads
    gives the same logits, bit for bit."""
    engine = _real_int4_engine(model_dir, num_threads=1)
    model = engine.runner.model
    calls = []
    forward = model.forward

    def record(*args):
        calls.append(args)
        return forward(*args)

    model.forward = record
    engine.add_request(EngineRequest("first", chat_ids(tokenizer, PROMPTS[1]), greedy(8, ignore_eos=True)))
    engine.step()
    engine.step()
    engine.add_request(EngineRequest("second", chat_ids(tokenizer, PROMPTS[2]), greedy(8, ignore_eos=True)))
    engine.step()  # first's decode and second's prompt in one step
    step = calls[-1]
    assert step[2].num_decode_tokens == 1 and step[2].prefills
    before = torch.get_num_threads()
    try:
        with torch.inference_mode():  # rewriting the same KV slots with the same values
            logits = []
            for n in (1, 2, 1, 2):
                torch.set_num_threads(n)
                logits.append(forward(*step).clone())
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(logits[0], other) for other in logits[1:])
