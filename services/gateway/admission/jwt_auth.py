"""JWT bearer tokens (PyJWT): HS256 with a shared secret, RS256/ES256 with PEM keys or a JWKS.

The accepted algorithms come from settings only. The token's `alg` header merely picks
among them, and each algorithm is verified only with keys of its own family, so `none`
and the classic confusion (HS256 "signed" with the RSA public key) fail. `exp` is
required; `exp`, `nbf`, `aud` and `iss` are checked with a small leeway.
"""

from __future__ import annotations

import json
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from llmserve.common.errors import Unauthenticated

from ..settings import GatewaySettings

_KTY_ALG = {"RSA": "RS256", "EC": "ES256", "oct": "HS256"}
_ERRORS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "JWT has expired"),
    (jwt.ImmatureSignatureError, "JWT is not valid yet (nbf/iat)"),
    (jwt.InvalidAudienceError, "JWT audience is not accepted"),
    (jwt.InvalidIssuerError, "JWT issuer is not accepted"),
    (jwt.MissingRequiredClaimError, "JWT lacks a required claim"),
)


class JwtVerifier:
    """Verifies JWTs against configured keys and maps their claims to (tenant, models)."""

    def __init__(self, settings: GatewaySettings):
        self.settings = settings
        self.algorithms = list(settings.jwt_algorithms)
        self._keys: dict[str, list[tuple[str | None, object]]] = {alg: [] for alg in self.algorithms}
        if settings.jwt_hs256_secret:
            self._add("HS256", None, settings.jwt_hs256_secret.encode())
        for path in settings.jwt_public_key_paths:
            key = load_pem_public_key(Path(path).read_bytes())
            if isinstance(key, rsa.RSAPublicKey):
                self._add("RS256", None, key)
            elif isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
                self._add("ES256", None, key)
            else:
                raise ValueError(f"{path}: only RSA and EC P-256 public keys are supported")
        if settings.jwks_path:
            for jwk in json.loads(Path(settings.jwks_path).read_text())["keys"]:
                alg = jwk.get("alg") or _KTY_ALG.get(jwk.get("kty", ""))
                if alg in self._keys:
                    self._add(alg, jwk.get("kid"), jwt.PyJWK(jwk, algorithm=alg).key)

    def _add(self, alg: str, kid: str | None, key: object) -> None:
        if alg in self._keys:  # keys for algorithms not accepted are never used
            self._keys[alg].append((kid, key))

    @property
    def configured(self) -> bool:
        return any(self._keys.values())

    def verify(self, token: str) -> tuple[str, frozenset[str] | None]:
        """(tenant, allowed models or None for all) of a valid token; else Unauthenticated."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as e:
            raise Unauthenticated("malformed JWT") from e
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in self._keys:
            raise Unauthenticated(f"JWT algorithm {alg!r} is not accepted")
        candidates = [key for key_kid, key in self._keys[alg] if kid is None or key_kid in (None, kid)]
        for key in candidates:
            try:
                claims = self._decode(token, key, alg)
            except jwt.InvalidSignatureError:
                continue  # another configured key may have signed it
            except jwt.PyJWTError as e:
                raise Unauthenticated(_message(e)) from e
            return self._identity(claims)
        raise Unauthenticated("JWT signature does not verify")

    def _decode(self, token: str, key: object, alg: str) -> dict:
        s = self.settings
        return jwt.decode(
            token,
            key,
            algorithms=[alg],
            audience=s.jwt_audience or None,
            issuer=s.jwt_issuer or None,
            leeway=s.jwt_leeway_s,
            options={
                "require": ["exp"],
                "verify_aud": bool(s.jwt_audience),
                "verify_iss": bool(s.jwt_issuer),
            },
        )

    def _identity(self, claims: dict) -> tuple[str, frozenset[str] | None]:
        tenant = claims.get(self.settings.jwt_tenant_claim) or claims.get("sub")
        if not isinstance(tenant, str) or not tenant:
            raise Unauthenticated(f"JWT names no tenant ({self.settings.jwt_tenant_claim} or sub)")
        models = claims.get(self.settings.jwt_models_claim)
        if models is None:
            return tenant, None
        if isinstance(models, str):
            models = models.split()
        if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
            raise Unauthenticated(f"JWT claim {self.settings.jwt_models_claim} must list model names")
        return tenant, frozenset(models)


def _message(error: Exception) -> str:
    for cls, message in _ERRORS:
        if isinstance(error, cls):
            return message
    return "invalid JWT"
