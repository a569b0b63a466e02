"""Per-token SSE chunk cost, side by side in one run: how a stream chunk is built and encoded.

- `json.dumps`: the builder's dict, encoded as before the protocol models (json.dumps);
- `to_json`: the same dict, encoded by pydantic's encoder (what api.py does now);
- `models`: the chunk built from the protocol models (validated) and `model_dump_json`.

Rounds alternate the three so load changes hit them alike; the best round of each is reported
with the ratios. Run: `.venv/bin/python scripts/chunk_json_microbench.py`.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from llmserve.common.logprobs import TokenLogprob
from llmserve.gateway.admission.validation import GenerateParams
from llmserve.gateway.http.api import to_json
from llmserve.gateway.http.openai_format import OpenAIRequest
from llmserve.gateway.http.protocol import ChatCompletionChunk
from llmserve.gateway.http.response_builder import ResponseBuilder
from llmserve.gateway.streams.inflight import TokenEvent


class _Tokenizer:
    def decode(self, ids: list[int]) -> str:
        return f" tok{ids[0]}"


def _builder(logprobs: bool) -> ResponseBuilder:
    params = GenerateParams(model="m", logprobs=logprobs, top_logprobs=2 if logprobs else 0)
    return ResponseBuilder(OpenAIRequest(params, chat=True, stream=True, include_usage=False), "abc", "SmolLM2",
                           _Tokenizer())


def _event(logprobs: bool) -> TokenEvent:
    lp = [TokenLogprob(17, -0.5, ((17, -0.5), (18, -1.5)))] if logprobs else None
    return TokenEvent(index=3, token_ids=[17], text=" world", logprobs=lp)


def _typed(builder: ResponseBuilder, event: TokenEvent) -> bytes:
    chunk: Any = builder.chunk(0, event)
    return ChatCompletionChunk(**chunk).model_dump_json(exclude_unset=True).encode()


def main(rounds: int = 15, calls: int = 4000) -> None:
    print(f"cpu count {os.cpu_count()}, loadavg {_load()}")
    for logprobs in (False, True):
        builder, event = _builder(logprobs), _event(logprobs)
        ways = {
            "json.dumps": lambda b=builder, e=event: json.dumps(b.chunk(0, e)).encode(),
            "to_json": lambda b=builder, e=event: to_json(b.chunk(0, e)),
            "models": lambda b=builder, e=event: _typed(b, e),
        }
        assert len({json.dumps(json.loads(f())) for f in ways.values()}) == 1, "the three must send the same JSON"
        best = dict.fromkeys(ways, float("inf"))
        for _ in range(rounds):
            for name, f in ways.items():
                start = time.perf_counter()
                for _ in range(calls):
                    f()
                best[name] = min(best[name], (time.perf_counter() - start) / calls)
        base = best["json.dumps"]
        print(f"chat chunk, logprobs={logprobs}: " + ", ".join(
            f"{name} {t * 1e6:.2f} us ({t / base:.2f}x)" for name, t in best.items()))
    print(f"loadavg after {_load()}")


def _load() -> list[str]:
    with open("/proc/loadavg") as f:
        return f.read().split()[:3]


if __name__ == "__main__":
    main()
