"""Credentials for the gateway: `authorization: Bearer <api key or JWT>` metadata.

`ApiKey` is a fixed key; `BearerToken` calls a provider for a (possibly short-lived) token
and caches it until shortly before it expires, so a JWT minted by an identity service is
refreshed without the caller re-creating the client.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Protocol

Metadata = tuple[tuple[str, str], ...]


class Auth(Protocol):
    """Anything that yields the metadata to attach to each call."""

    def metadata(self) -> Metadata:
        """The metadata for the next call (may refresh a token)."""


class NoAuth:
    """Sends no credentials (for gateways without auth, or tests of UNAUTHENTICATED)."""

    def metadata(self) -> Metadata:
        return ()


class ApiKey:
    """A static API key."""

    def __init__(self, key: str):
        self.key = key

    def metadata(self) -> Metadata:
        return (("authorization", f"Bearer {self.key}"),)

    def __repr__(self) -> str:  # never print the secret
        return "ApiKey(****)"


class BearerToken:
    """A token from `provider() -> (token, expires_unix_s | None)`, refreshed `skew_s` early."""

    def __init__(self, provider: Callable[[], tuple[str, float | None]], skew_s: float = 30.0):
        self._provider = provider
        self._skew_s = skew_s
        self._lock = threading.Lock()
        self._token = ""
        self._expires: float | None = 0.0

    def metadata(self) -> Metadata:
        with self._lock:
            if self._expires is not None and time.time() >= self._expires - self._skew_s:
                self._token, self._expires = self._provider()
            return (("authorization", f"Bearer {self._token}"),)


def resolve_auth(api_key: str | None = None, auth: Auth | None = None) -> Auth:
    """`auth` if given, else an ApiKey from `api_key` or $LLMSERVE_API_KEY, else NoAuth."""
    if auth is not None:
        return auth
    key = api_key or os.environ.get("LLMSERVE_API_KEY")
    return ApiKey(key) if key else NoAuth()
