"""LangChain's `ChatOpenAI(...).with_structured_output(PydanticModel)` against the gateway, real model.

LangChain sends OpenAI's `response_format: json_schema` built from the pydantic model and
parses the reply into it; every prompt must come back as a parsed object. The default run
takes 10 prompts, the slow-marked run 50.
"""

from __future__ import annotations

from typing import Literal

import pytest
from pydantic import BaseModel, Field

from llmserve.gateway.routing.catalog import ModelCatalog
from llmserve.worker.engine.llm_engine import LLMEngine
from tests.support.stack import API_KEY, MODEL, running_stack

langchain_openai = pytest.importorskip("langchain_openai")

SUBJECTS = ["a chef", "a pilot", "a painter", "a nurse", "a farmer", "a teacher", "a sailor", "a baker",
            "a poet", "a doctor"]
ASKS = ["Describe {}.", "Invent {} as a character.", "Tell me about {}.", "Make up {} who lives in Rome.",
        "Give me {} with a hobby."]
PROMPTS = [a.format(s) for a in ASKS for s in SUBJECTS]  # 50


class Person(BaseModel):
    """A person."""

    name: str = Field(description="full name", max_length=30)
    age: int = Field(ge=0, le=120)
    job: str = Field(max_length=30)
    mood: Literal["happy", "sad", "calm"]


@pytest.fixture(scope="module")
def catalog():
    return ModelCatalog.load([MODEL])


@pytest.fixture(scope="module")
def engine(catalog):
    return LLMEngine.from_pretrained(catalog.get(MODEL).path, device="cpu", max_num_seqs=16, num_kv_blocks=2048)


async def _parsed(redis_url, catalog, engine, prompts: list[str]) -> None:
    async with running_stack(redis_url, [engine], catalog) as stack:
        llm = langchain_openai.ChatOpenAI(
            model=MODEL, base_url=f"http://127.0.0.1:{stack.gateway.service.http_port}/v1", api_key=API_KEY,
            temperature=0, max_tokens=120, max_retries=0, timeout=300)
        structured = llm.with_structured_output(Person)  # method: json_schema (LangChain's default)
        results = await structured.abatch(prompts, config={"max_concurrency": 8})
        assert all(isinstance(r, Person) for r in results), results
        assert len({r.name for r in results}) > 1  # the model, not a fixed answer, filled them in


async def test_with_structured_output_parses_every_reply(redis_url, catalog, engine):
    await _parsed(redis_url, catalog, engine, PROMPTS[::5])


@pytest.mark.slow
@pytest.mark.exhaustive
@pytest.mark.timeout(1200)
async def test_with_structured_output_50_of_50(redis_url, catalog, engine):
    assert len(PROMPTS) == 50
    await _parsed(redis_url, catalog, engine, PROMPTS)
