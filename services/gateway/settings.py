"""Gateway settings (environment prefix LLMSERVE_GATEWAY_)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from llmserve.common.model_store import DEFAULT_MODEL
from llmserve.common.settings import ServiceSettings, StrList


class GatewaySettings(ServiceSettings):
    """Everything the gateway reads from its environment, validated once at start."""

    model_config = SettingsConfigDict(env_prefix="LLMSERVE_GATEWAY_", extra="ignore")

    port: int = Field(50051, ge=0, le=65535, description="Public gRPC port.")
    http_port: int = Field(
        8000, ge=0, le=65535,
        description="OpenAI-compatible HTTP and WebSocket port; 0 picks a free one. Left unset while the "
        "gRPC port is 0 (tests, ephemeral replicas), it is 0 too.",
    )
    advertise_host: str = Field(
        "", description="Host workers use to reach this gateway's token sink; empty: the bind host."
    )
    internal_port: int = Field(
        50055, ge=0, le=65535,
        description="Internal port of the token sink workers and schedulers stream to (never served on the "
        "public port); 0 picks a free one. Left unset while the gRPC port is 0, it is 0 too.",
    )
    # -- credentials ---------------------------------------------------------------------
    api_keys: StrList = Field(
        default_factory=list,
        description="Static API keys as `tenant=key` (or a bare key: tenant `default`), all models, "
        "default limits. JSON list or comma-separated. Keys made by `llmserve keys create` live in Redis.",
    )
    api_key_cache_s: float = Field(
        2.0, ge=0, description="How long a key looked up in Redis is trusted locally: a revoked key "
        "stops working within this time."
    )
    jwt_algorithms: StrList = Field(
        default_factory=list,
        description="JWT algorithms accepted (HS256, RS256, ES256); empty: JWTs are not accepted. "
        "The token's header never widens this list.",
    )
    jwt_hs256_secret: str = Field("", description="Shared secret for HS256 tokens.")
    jwt_public_key_paths: StrList = Field(
        default_factory=list, description="PEM public keys (RSA for RS256, EC P-256 for ES256)."
    )
    jwks_path: str = Field("", description="A JWKS file (keys chosen by `kid`).")
    jwt_audience: str = Field("", description="Required `aud`; empty: aud is not checked.")
    jwt_issuer: str = Field("", description="Required `iss`; empty: iss is not checked.")
    jwt_leeway_s: float = Field(10.0, ge=0, le=300, description="Clock skew allowed on exp and nbf.")
    jwt_tenant_claim: str = Field("tenant", description="Claim naming the tenant (falls back to `sub`).")
    jwt_models_claim: str = Field(
        "models", description="Claim listing the allowed models (list or space-separated); absent: all."
    )
    # -- models and validation -----------------------------------------------------------
    models: StrList = Field(
        default_factory=lambda: [DEFAULT_MODEL],
        description="Models served from a static catalog: names or directories. Any other model name is "
        "looked up in the model registry in Redis (`llmserve models`).",
    )
    split_sticky_by: Literal["tenant", "request"] = Field(
        "tenant", description="What a registry alias's traffic split hashes to pick a version: `tenant` "
        "keeps each tenant on one version; `request` spreads every request independently.",
    )
    registry_cache_s: float = Field(
        1.0, ge=0, description="How long a registry alias (and the live-worker list) is trusted locally: "
        "an activate or split change reaches requests within this time.",
    )
    registry_fallback: bool = Field(
        True, description="A registry model whose routed version has no live worker yet goes to the alias's "
        "own, then its previous version while one has a worker (hot update); off: it queues until its deadline.",
    )
    default_max_tokens: int = Field(256, ge=1, description="max_tokens when the request leaves it unset.")
    max_prompt_bytes: int = Field(256 * 1024, ge=1, description="Largest prompt (or all messages) in bytes.")
    max_chat_message_bytes: int = Field(
        64 * 1024, ge=1, description="Largest single chat message content in bytes."
    )
    max_request_bytes: int = Field(
        1024 * 1024, ge=1024, description="Largest HTTP request body or WebSocket message in bytes."
    )
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
    redis_min_replicas: int = Field(
        0, ge=0, description="Replicas that must hold an enqueued request before it is accepted (Redis "
        "`WAIT`, on the connection that wrote it): with Sentinel, a failover then cannot lose an accepted "
        "request. Fewer within `redis_replica_wait_ms` answers UNAVAILABLE (the request is cancelled). "
        "0: accept once the primary has it (see docs/ops.md for what a failover can then lose).",
    )
    redis_replica_wait_ms: int = Field(
        100, ge=1, description="How long an enqueue waits for `redis_min_replicas` replicas."
    )
    # -- rate limits (defaults per tenant; a stored API key may override them) -----------
    requests_per_minute: int = Field(600, ge=0, description="Requests a tenant may start per minute; 0: no limit.")
    tokens_per_minute: int = Field(
        1_000_000, ge=0,
        description="Tokens (prompt + max_tokens reserved at admission, corrected to the real use at the "
        "end) per tenant per minute; 0: no limit.",
    )
    max_concurrent_streams: int = Field(
        48, ge=0,
        description="Requests a tenant may run at once; 0: no limit. The default stays below the smallest "
        "worker pool (a worker runs max_num_seqs = 64 sequences), so one tenant alone cannot fill a worker "
        "and other tenants' requests still start; raise it with the pool.",
    )
    rate_window_s: float = Field(60.0, gt=0, description="The sliding window of the per-minute limits.")
    stream_lease_s: float = Field(
        30.0, ge=1, description="A concurrency slot expires unless renewed this often; a crashed gateway's "
        "slots come back after it."
    )
    registration_ttl_s: float = Field(
        6.0, ge=0.5,
        description="This gateway's registration in Redis (`llmserve:gateway:{address}`) expires unless "
        "renewed within this long (it is renewed every third of it). Workers treat the requests of a "
        "gateway whose registration is gone as orphans and cancel them once the worker's "
        "orphan_grace_s passed without a re-attach (docs/reattach.md).",
    )
    ratelimit_timeout_ms: float = Field(
        15.0, gt=0, description="Longest wait for the rate limiter's Redis call before the policy decides "
        "(while Redis is silent; see `ratelimit_slow_wait_ms` for a Redis that is merely slow)."
    )
    ratelimit_slow_wait_ms: float = Field(
        1000.0, ge=0, description="Slow is not down: while Redis has answered some limiter call within "
        "this long, a call past `ratelimit_timeout_ms` keeps waiting for its answer, up to this long in "
        "all (a busy script or a fork stalls Redis for hundreds of ms). A Redis that has answered nothing "
        "that recently is treated as down at `ratelimit_timeout_ms`. 0: every call is decided by "
        "`ratelimit_timeout_ms`.",
    )
    ratelimit_on_redis_down: Literal["closed", "open"] = Field(
        "closed", description="Redis unreachable: `closed` answers UNAVAILABLE; `open` admits within a "
        "local in-process bound."
    )
    ratelimit_local_share: float = Field(
        1.0, gt=0, le=1,
        description="Fail-open bound: the share of each tenant's limits one gateway grants on its own "
        "(with N gateways, 1/N keeps the total near the limit).",
    )
    admission_max_waiting_per_tenant: int = Field(
        512, ge=0,
        description="Admissions of one tenant that may wait for the rate limiter at once on this gateway; "
        "more are refused at once (RESOURCE_EXHAUSTED / 429), so one tenant's flood never delays another "
        "tenant's admission. 0: no bound.",
    )
    admission_stall_s: float = Field(
        5.0, gt=0,
        description="Health turns NOT_SERVING while the rate limiter's oldest unanswered call is older than "
        "this (the admission path no longer completes), and SERVING again once it completes.",
    )
    breaker_failures: int = Field(3, ge=1, description="Consecutive Redis failures that open the breaker.")
    breaker_reset_s: float = Field(1.0, gt=0, description="How long an open breaker skips Redis before a trial.")
    # -- TLS -----------------------------------------------------------------------------
    tls_cert_path: str = Field("", description="PEM certificate chain for the public gRPC and HTTP ports.")
    tls_key_path: str = Field("", description="PEM private key of that certificate.")
    tls_client_ca_path: str = Field(
        "", description="PEM CA bundle: when set, clients must present a certificate it signed (mutual TLS)."
    )

    # -- public HTTP listener limits (slowloris, socket floods) ---------------------------
    http_header_timeout_s: float = Field(
        10.0, ge=0, description="A connection must send a request's line and headers within this long of "
        "opening (or of its previous response); else it is closed. 0: no limit.",
    )
    http_body_timeout_s: float = Field(
        30.0, ge=0, description="A request's body must arrive within this long of its headers; else the "
        "connection is closed. 0: no limit.",
    )
    http_idle_timeout_s: float = Field(
        5.0, gt=0, description="A kept-alive connection idle this long after a response is closed."
    )
    http_max_connections: int = Field(
        4096, ge=0, description="Open HTTP connections per gateway process; more are answered 503 with "
        "Retry-After. 0: no cap.",
    )
    http_max_connections_per_client: int = Field(
        2048, ge=0, description="Open HTTP connections per client address (a load balancer is one address: "
        "keep it generous); more are answered 503. 0: no cap.",
    )

    @field_validator("jwt_algorithms")
    @classmethod
    def _known_algorithms(cls, value: list[str]) -> list[str]:
        unknown = set(value) - {"HS256", "RS256", "ES256"}
        if unknown:
            raise ValueError(f"unsupported JWT algorithms {sorted(unknown)}; use HS256, RS256, ES256")
        return value

    @model_validator(mode="after")
    def _ephemeral_ports(self) -> GatewaySettings:
        # Two gateways on port 0 must not both claim :8000.
        if self.port == 0 and "http_port" not in self.model_fields_set:
            self.http_port = 0
        if self.port == 0 and "internal_port" not in self.model_fields_set:
            self.internal_port = 0
        return self

    @property
    def tls_enabled(self) -> bool:
        return bool(self.tls_cert_path and self.tls_key_path)
