"""Who is calling: static keys, stored API keys and JWTs, mapped to tenants.

A bearer token is tried in this order: the static `tenant=key` entries from settings (in
memory, every digest compared), then by shape: `llmsk_<id>_<secret>` is looked up in the
Redis key store, a three-part dotted token is verified as a JWT. Any failure is
UNAUTHENTICATED; a valid identity asking for a model it may not use is PERMISSION_DENIED.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from llmserve.common.api_keys import KEY_PREFIX, LIMIT_NAMES, ApiKeyStore
from llmserve.common.errors import PermissionDenied, Unauthenticated, echo

from .jwt_auth import JwtVerifier


@dataclass(frozen=True)
class Limits:
    """Per-tenant limits; None leaves a field at the settings' default."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_concurrent_streams: int | None = None

    def over(self, defaults: Limits) -> Limits:
        """These limits with unset fields taken from `defaults`."""
        return Limits(**{
            name: getattr(self, name) if getattr(self, name) is not None else getattr(defaults, name)
            for name in LIMIT_NAMES
        })


@dataclass(frozen=True)
class Identity:
    """An authenticated caller: its tenant, the models it may use (None: all), its limits."""

    tenant: str
    models: frozenset[str] | None = None
    limits: Limits = Limits()

    def may_see(self, model: str) -> bool:
        """Whether the model is listed to this caller (ListModels, /v1/models)."""
        return self.models is None or model in self.models

    def check_model(self, model: str) -> None:
        if self.models is not None and model not in self.models:
            raise PermissionDenied(f"tenant {self.tenant!r} may not use model {echo(model)}")


class StaticKeys:
    """The `tenant=key` entries from settings; only SHA-256 digests are kept in memory.

    Every candidate is compared (hmac.compare_digest), so timing does not reveal which key
    nearly matched.
    """

    def __init__(self, entries: list[str]):
        self._digests: list[tuple[bytes, str]] = []
        for entry in entries:
            tenant, sep, key = entry.partition("=")
            if not sep:
                tenant, key = "default", entry
            self._digests.append((_digest(key), tenant))

    def __bool__(self) -> bool:
        return bool(self._digests)

    def match(self, token: str) -> Identity | None:
        candidate = _digest(token)
        tenant = None
        for digest, owner in self._digests:
            if hmac.compare_digest(digest, candidate):
                tenant = owner
        return Identity(tenant) if tenant is not None else None


class Authenticator:
    """Turns an `authorization` header into an Identity, or raises Unauthenticated."""

    def __init__(self, static: StaticKeys, store: ApiKeyStore | None = None, jwt: JwtVerifier | None = None):
        self.static = static
        self.store = store
        self.jwt = jwt

    @property
    def configured(self) -> bool:
        return bool(self.static) or self.store is not None or bool(self.jwt and self.jwt.configured)

    async def authenticate(self, authorization: str | None) -> Identity:
        token = bearer_token(authorization)
        identity = self.static.match(token)
        if identity is not None:
            return identity
        if self.store is not None and token.startswith(KEY_PREFIX + "_"):
            record = await self.store.lookup(token)
            if record is not None:
                return Identity(record.tenant, record.model_set(), Limits(**record.limit_overrides()))
        elif self.jwt is not None and self.jwt.configured and token.count(".") == 2:
            tenant, models = self.jwt.verify(token)
            return Identity(tenant, models)
        raise Unauthenticated("invalid API key")


#: Longest `authorization` value accepted (JWTs with many claims fit); longer is refused unread.
MAX_AUTHORIZATION_BYTES = 4096


def single_authorization(values: list[str]) -> str | None:
    """The one `authorization` value of a request. Two are ambiguous (a proxy and a client may
    disagree on which counts), and an oversized one is refused before any lookup: both are
    UNAUTHENTICATED, decided here without touching Redis."""
    if len(values) > 1:
        raise Unauthenticated("more than one `authorization` header; send exactly one")
    if values and len(values[0].encode()) > MAX_AUTHORIZATION_BYTES:
        raise Unauthenticated(f"`authorization` longer than {MAX_AUTHORIZATION_BYTES} bytes")
    return values[0] if values else None


def bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise Unauthenticated("missing `authorization: Bearer <api key>` metadata")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("authorization must be `Bearer <api key>`")
    return token.strip()


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()
