"""What `llmserve bench` can load: the gateway's gRPC API, or its OpenAI HTTP API."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from llmserve.client import AsyncClient, RetryPolicy


class GrpcTarget:
    """GenerateStream through the llmserve client (no retries: a failure is measured)."""

    def __init__(self, address: str, api_key: str | None, model: str, timeout: float = 600.0):
        self.client = AsyncClient(
            address, api_key=api_key, timeout=timeout, retry=RetryPolicy(max_attempts=1)
        )
        self.model = model

    async def stream(self, prompt: dict, max_tokens: int) -> AsyncIterator[int]:
        params = {k: prompt[k] for k in ("temperature", "seed") if k in prompt}
        async for piece in self.client.stream(
            self.model, prompt.get("prompt"), messages=prompt.get("messages"), max_tokens=max_tokens, **params
        ):
            yield len(piece.token_ids)

    async def close(self) -> None:
        await self.client.close()


class HttpTarget:
    """`POST /v1/chat/completions` with `stream: true` (SSE); one chunk counts as one token."""

    def __init__(self, base_url: str, api_key: str | None, model: str, timeout: float = 600.0):
        import httpx

        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.AsyncClient(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout)
        self.model = model

    async def stream(self, prompt: dict, max_tokens: int) -> AsyncIterator[int]:
        messages = prompt.get("messages") or [{"role": "user", "content": prompt["prompt"]}]
        body = {
            "model": self.model,
            "messages": messages,
            "max_tokens": max_tokens,
            "stream": True,
            **{k: prompt[k] for k in ("temperature", "seed") if k in prompt},
        }
        import httpx

        started = False
        for attempt in (1, 2):
            try:
                async with self.http.stream("POST", "/v1/chat/completions", json=body) as response:
                    response.raise_for_status()
                    async for line in response.aiter_lines():
                        if not line.startswith("data:") or line.strip() == "data: [DONE]":
                            continue
                        chunk = json.loads(line[5:])
                        delta = (chunk.get("choices") or [{}])[0].get("delta", {})
                        started = True
                        yield 1 if delta.get("content") else 0
                return
            except httpx.RemoteProtocolError:
                # A server that closes keep-alive connections after N requests (cpp-httplib, in
                # llama-server, after 5) races a client reusing one: the request was never read,
                # so sending it again on a fresh connection is what browsers and urllib3 do.
                if attempt == 2 or started:
                    raise

    async def close(self) -> None:
        await self.http.aclose()
