"""The worker's inference engine: continuous batching over a paged KV cache.

The contract (`types`, `interface`) imports nothing heavy; `LLMEngine` and `EngineConfig`
load torch and transformers, so they are imported on first use.
"""

from .interface import Engine
from .types import EngineRequest, EngineStats, FinishReason, SamplingParams, TokenOutput

__all__ = [
    "Engine",
    "EngineConfig",
    "EngineRequest",
    "EngineStats",
    "FinishReason",
    "LLMEngine",
    "SamplingParams",
    "TokenOutput",
]


def __getattr__(name: str):
    if name == "LLMEngine":
        from .llm_engine import LLMEngine

        return LLMEngine
    if name == "EngineConfig":
        from .config import EngineConfig

        return EngineConfig
    raise AttributeError(name)
