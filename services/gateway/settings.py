"""Gateway settings (environment prefix LLMSERVE_GATEWAY_)."""

from __future__ import annotations

import json
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from llmserve.common.model_store import DEFAULT_MODEL
from llmserve.common.settings import ServiceSettings


class GatewaySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LLMSERVE_GATEWAY_", extra="ignore")

    port: int = Field(50051, ge=0, le=65535, description="Public gRPC port.")
    advertise_host: str = Field(
        "", description="Host workers use to reach this gateway's token sink; empty: the bind host."
    )
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Accepted API keys as `tenant=key` (or a bare key: tenant `default`). "
        "JSON list or comma-separated.",
    )
    models: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: [DEFAULT_MODEL], description="Models served: names or directories."
    )
    default_max_tokens: int = Field(256, ge=1, description="max_tokens when the request leaves it unset.")
    max_prompt_bytes: int = Field(256 * 1024, ge=1, description="Largest prompt (or all messages) in bytes.")
    max_stop_strings: int = Field(4, ge=0, description="Most stop strings per request.")
    max_stop_bytes: int = Field(64, ge=1, description="Longest stop string in bytes.")
    max_messages: int = Field(256, ge=1, description="Most chat messages per request.")
    max_queue_len: int = Field(10_000, ge=1, description="Queued requests per model before UNAVAILABLE.")
    default_timeout_s: float = Field(
        600.0, gt=0, description="Deadline for requests whose client sets none."
    )
    redis_timeout_s: float = Field(
        1.0, gt=0, description="Socket timeout towards Redis: an outage answers UNAVAILABLE this fast."
    )

    @field_validator("api_keys", "models", mode="before")
    @classmethod
    def _split_commas(cls, value):
        if isinstance(value, str):
            if value.strip().startswith("["):
                return json.loads(value)
            return [part.strip() for part in value.split(",") if part.strip()]
        return value
