"""Settings shared by every service. Each service subclasses `ServiceSettings`.

Values come from the environment (`LLMSERVE_<SERVICE>_<FIELD>`, plus a few unprefixed
shared ones such as REDIS_URL) and are validated once at start; code below the entrypoint
receives the settings object, never reads the environment itself.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import AfterValidator, AliasChoices, BeforeValidator, Field, SecretStr
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .redis_client import parse_sentinel_url


def _split_list(value):
    """A list setting from the environment: a JSON list, or comma-separated words."""
    if isinstance(value, str):
        if value.strip().startswith("["):
            return json.loads(value)
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


#: The Redis `llmserve up` (and so `make run`) starts when REDIS_URL is unset: not the
#: system one a machine may already run on :6379. The one place this default is written.
DEFAULT_REDIS_PORT = 6380
DEFAULT_REDIS_URL = f"redis://127.0.0.1:{DEFAULT_REDIS_PORT}/0"

#: A list[str] setting that reads `a,b,c` or `["a", "b"]` from the environment.
StrList = Annotated[list[str], NoDecode, BeforeValidator(_split_list)]


class InternalAuthSettings(BaseSettings):
    """Internal authentication (libs/common/internal_auth.py): the same fields, unprefixed, for
    every service and the CLI."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    internal_secret: SecretStr = Field(
        SecretStr(""),
        validation_alias=AliasChoices("LLMSERVE_INTERNAL_SECRET"),
        description="Master secret of internal calls: servers verify service tokens with it, and a "
        "service without LLMSERVE_INTERNAL_TOKEN derives its own from it. Empty (and no internal TLS): "
        "internal calls are unauthenticated and internal ports must bind to loopback.",
    )
    internal_token: SecretStr = Field(
        SecretStr(""),
        validation_alias=AliasChoices("LLMSERVE_INTERNAL_TOKEN"),
        description="This process's own internal credential (`llmserve internal-token ROLE ID`), for "
        "clients that do not hold the master secret; empty: derived from LLMSERVE_INTERNAL_SECRET.",
    )
    internal_tls_cert_path: str = Field(
        "", validation_alias=AliasChoices("LLMSERVE_INTERNAL_TLS_CERT_PATH"),
        description="PEM certificate of this service for internal mutual TLS; its common name is "
        "`<role>.<id>` (e.g. `worker.w1`). Set with the key and CA: internal ports then require client "
        "certificates and tokens are not used.",
    )
    internal_tls_key_path: str = Field(
        "", validation_alias=AliasChoices("LLMSERVE_INTERNAL_TLS_KEY_PATH"),
        description="PEM private key of the internal certificate.",
    )
    internal_tls_ca_path: str = Field(
        "", validation_alias=AliasChoices("LLMSERVE_INTERNAL_TLS_CA_PATH"),
        description="PEM CA bundle that signs every service's internal certificate.",
    )



def _valid_redis_url(url: str) -> str:
    parse_sentinel_url(url)  # a malformed Sentinel URL fails at start, naming what is wrong
    return url


class ServiceSettings(InternalAuthSettings):
    """Fields every service has (internal authentication's among them)."""

    # populate_by_name: tests and tools pass unprefixed fields (internal_secret=...) by name.
    model_config = SettingsConfigDict(extra="ignore", validate_default=True, populate_by_name=True)

    host: str = Field("127.0.0.1", description="Address the gRPC server binds to.")
    port: int = Field(0, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    redis_url: Annotated[str, AfterValidator(_valid_redis_url)] = Field(
        DEFAULT_REDIS_URL,
        validation_alias=AliasChoices("REDIS_URL", "LLMSERVE_REDIS_URL"),
        description="Redis holding the streams, the worker registry and the rate limits: "
        "`redis://`, `rediss://` (TLS), `unix://`, or "
        "`redis+sentinel://[user:password@]host:port[,host:port...]/<master>[/<db>]` to follow "
        "the primary Sentinel names (see docs/ops.md).",
    )
    log_format: Literal["console", "json"] = Field(
        "console",
        validation_alias=AliasChoices("LLMSERVE_LOG_FORMAT"),
        description="console: readable in a terminal; json: one object a line.",
    )
    log_level: str = Field("info", validation_alias=AliasChoices("LLMSERVE_LOG_LEVEL"))
    otlp_endpoint: str = Field(
        "",
        validation_alias=AliasChoices("LLMSERVE_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"),
        description="OTLP/gRPC endpoint (the monitor, host:port); empty: no export.",
    )
    metrics_port: int | None = Field(
        None, ge=0, le=65535,
        description="Port of this process's own Prometheus `/metrics` and `/health` (HTTP); unset: "
        "none (the monitor aggregates every service anyway); 0 picks a free one. The gateway serves "
        "both on its HTTP API port instead.",
    )
    drain_seconds: float = Field(
        10.0, ge=0, description="On SIGTERM, how long in-flight work may take before stopping."
    )
    max_message_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="gRPC message size limit.")
    grpc_max_connections: int = Field(
        4096, ge=0, description="Open gRPC connections the server accepts; past it new ones are refused. "
        "0: no cap.",
    )
    grpc_handshake_timeout_s: float = Field(
        10.0, gt=0, description="A gRPC connection must finish its HTTP/2 (and TLS) handshake this fast; "
        "else it is closed.",
    )
    grpc_idle_timeout_s: float = Field(
        300.0, gt=0, description="A gRPC connection with no call for this long is closed (clients reconnect "
        "transparently).",
    )

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"
