"""A small synchronous client over `llmserve.gateway.v1.GenerationService`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import grpc

from llmserve.gateway.v1 import generation_pb2 as pb
from llmserve.gateway.v1 import generation_pb2_grpc

_FINISH = {pb.FINISH_REASON_STOP: "stop", pb.FINISH_REASON_LENGTH: "length"}


@dataclass
class StreamPiece:
    index: int
    token_ids: list[int]
    text: str
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class Completion:
    request_id: str
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


def build_request(model: str, prompt: str | None = None, messages: list[dict] | None = None,
                  **params) -> pb.GenerateRequest:
    request = pb.GenerateRequest(model=model, **{k: v for k, v in params.items() if v is not None})
    if messages is not None:
        request.messages.messages.extend(pb.ChatMessage(**m) for m in messages)
    elif prompt is not None:
        request.prompt = prompt
    return request


class Client:
    """`Client("127.0.0.1:50051", api_key=...)`; use as a context manager to close the channel."""

    def __init__(self, address: str, api_key: str | None = None, timeout: float | None = 120.0):
        self.channel = grpc.insecure_channel(address)
        self.stub = generation_pb2_grpc.GenerationServiceStub(self.channel)
        self.metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        self.timeout = timeout

    def generate(self, model: str, prompt: str | None = None, *, messages=None, **params) -> Completion:
        response = self.stub.Generate(build_request(model, prompt, messages, **params),
                                      metadata=self.metadata, timeout=self.timeout)
        return Completion(response.request_id, response.text, _FINISH.get(response.finish_reason, ""),
                          response.usage.prompt_tokens, response.usage.completion_tokens)

    def stream(self, model: str, prompt: str | None = None, *, messages=None, **params) -> Iterator[StreamPiece]:
        call = self.stub.GenerateStream(build_request(model, prompt, messages, **params),
                                        metadata=self.metadata, timeout=self.timeout)
        for m in call:
            yield StreamPiece(m.index, list(m.token_ids), m.text, _FINISH.get(m.finish_reason),
                              m.usage.prompt_tokens, m.usage.completion_tokens)

    def list_models(self) -> list[pb.ModelInfo]:
        return list(self.stub.ListModels(pb.ListModelsRequest(), metadata=self.metadata,
                                         timeout=self.timeout).models)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
