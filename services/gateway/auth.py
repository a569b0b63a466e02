"""Who is calling: API keys checked in constant time, mapped to tenants."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from llmserve.common.errors import Unauthenticated


@dataclass(frozen=True)
class Identity:
    tenant: str


class ApiKeyAuthenticator:
    """Checks `authorization: Bearer <key>` against configured `tenant=key` entries.

    Only SHA-256 digests of the keys are kept in memory; every candidate is compared
    (hmac.compare_digest) so timing does not reveal which key nearly matched.
    """

    def __init__(self, entries: list[str]):
        self._digests: list[tuple[bytes, str]] = []
        for entry in entries:
            tenant, sep, key = entry.partition("=")
            if not sep:
                tenant, key = "default", entry
            self._digests.append((_digest(key), tenant))

    @property
    def configured(self) -> bool:
        return bool(self._digests)

    def authenticate(self, authorization: str | None) -> Identity:
        if not authorization:
            raise Unauthenticated("missing `authorization: Bearer <api key>` metadata")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("authorization must be `Bearer <api key>`")
        candidate = _digest(token.strip())
        tenant = None
        for digest, owner in self._digests:
            if hmac.compare_digest(digest, candidate):
                tenant = owner
        if tenant is None:
            raise Unauthenticated("invalid API key")
        return Identity(tenant=tenant)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()
