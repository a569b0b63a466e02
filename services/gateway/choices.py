"""Several choices in one request, for every front end (gRPC, HTTP): `n` > 1, `best_of`
candidates and a list of prompts.

Each choice is its own generation (own request id `<id>.<index>`, own stream, fencing and
resume), so nothing below the gateway changes for them. Index order is OpenAI's: prompt by
prompt, `n` choices each (`index = prompt * n + choice`). The choices of one prompt carry
`fork_of` = their choice 0, so a worker that runs them together computes the prompt's KV once
(the engine forks the blocks); each draws from its own seed stream, derived from the request's
seed and the choice, so a seeded request reproduces all its choices.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import AsyncIterator

from llmserve.common.errors import InvalidArgument, LLMServeError

from .admission.validation import GenerateParams, Job
from .generation import GenerationService
from .streams.inflight import Event, FinishEvent

MAX_N = 16  # `n` at most
MAX_CHOICES = 64  # prompts x n at most
_MASK63 = (1 << 63) - 1


def choice_seed(seed: int, choice: int) -> int:
    """The seed of choice `choice` (choice 0 keeps the request's seed); splitmix64 mixing."""
    if choice == 0:
        return seed
    z = (seed + 0x9E3779B97F4A7C15 * (choice + 1)) & ((1 << 64) - 1)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & ((1 << 64) - 1)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & ((1 << 64) - 1)
    return (z ^ (z >> 31)) & _MASK63


def expand(params: GenerateParams, prompts: list[str | list[int]] | None, n: int,
           param: str = "n") -> list[GenerateParams]:
    """One GenerateParams per choice, in index order (`prompts` None: the chat or single prompt);
    `n` choices per prompt (best_of candidates, `param` "best_of", when they are more)."""
    if not 1 <= n <= MAX_N:
        raise InvalidArgument(f"{param} must be in [1, {MAX_N}]; got {n}", param=param)
    count = n * (len(prompts) if prompts is not None else 1)
    if count > MAX_CHOICES:
        raise InvalidArgument(f"prompts x {param} must be at most {MAX_CHOICES}; got {count}", param=param)
    if count == 1:
        return [_with_prompt(params, prompts[0]) if prompts is not None else params]
    base = params.request_id
    # Unseeded choices still need distinct streams; a drawn seed keeps a retried choice identical.
    seed = params.seed if params.seed is not None else random.getrandbits(63)
    out = []
    for p, prompt in enumerate(prompts if prompts is not None else [None]):
        for c in range(n):
            one = _with_prompt(params, prompt) if prompt is not None else params
            out.append(dataclasses.replace(
                one, request_id=f"{base}.{p * n + c}", seed=choice_seed(seed, c),
                fork_of=f"{base}.{p * n}" if c else ""))
    return out


def _with_prompt(params: GenerateParams, prompt: str | list[int]) -> GenerateParams:
    if isinstance(prompt, str):
        return dataclasses.replace(params, prompt=prompt)
    return dataclasses.replace(params, prompt=None, prompt_token_ids=list(prompt))


async def admit_all(service: GenerationService, authorization: str | None,
                    choices: list[GenerateParams]) -> list[Job]:
    """Admit every choice or none: a refusal gives back the leases already taken."""
    jobs: list[Job] = []
    try:
        for params in choices:
            jobs.append(await service.admit(authorization, params))
    except LLMServeError:
        for job in jobs:
            if job.lease is not None:
                await service.limiter.release(job.lease, 0)
        raise
    return jobs


async def merged(service: GenerationService, jobs: list[Job], timeout: float | None
                 ) -> AsyncIterator[tuple[int, Event]]:
    """The events of every choice as (index, event), in arrival order. The first error ends
    it (and cancels the other choices); so does closing it."""
    if len(jobs) == 1:
        async for event in service.stream(jobs[0], timeout):
            yield 0, event
        return
    queue: asyncio.Queue[tuple[int, Event | LLMServeError]] = asyncio.Queue()

    async def pump(index: int, job: Job) -> None:
        try:
            async for event in service.stream(job, timeout):
                queue.put_nowait((index, event))
        except LLMServeError as e:
            queue.put_nowait((index, e))

    tasks = [asyncio.create_task(pump(i, job)) for i, job in enumerate(jobs)]
    try:
        done = 0
        while done < len(tasks):
            index, event = await queue.get()
            if isinstance(event, LLMServeError):
                raise event
            if isinstance(event, FinishEvent):
                done += 1
            yield index, event
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
