"""Credentials: JWT (PyJWT) attacks and claims, stored API keys in real Redis, static keys."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest
import redis.asyncio as aioredis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from llmserve.common.api_keys import ApiKeyStore
from llmserve.common.errors import PermissionDenied, Unauthenticated
from llmserve.gateway.admission.auth import Authenticator, StaticKeys
from llmserve.gateway.admission.jwt_auth import JwtVerifier
from llmserve.gateway.settings import GatewaySettings

SECRET = "s" * 32
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def pem(public_key) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture(scope="module")
def key_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    (d / "rsa.pem").write_bytes(pem(RSA_KEY.public_key()))
    (d / "ec.pem").write_bytes(pem(EC_KEY.public_key()))
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(RSA_KEY.public_key()))
    (d / "jwks.json").write_text(json.dumps({"keys": [{**jwk, "kid": "k1", "alg": "RS256"}]}))
    return d


def verifier(key_files, **overrides) -> JwtVerifier:
    settings = dict(
        jwt_algorithms=["HS256", "RS256", "ES256"],
        jwt_hs256_secret=SECRET,
        jwt_public_key_paths=[str(key_files / "rsa.pem"), str(key_files / "ec.pem")],
        jwt_audience="llmserve",
        jwt_issuer="https://idp.example",
        port=0,
    )
    return JwtVerifier(GatewaySettings(**{**settings, **overrides}))


def claims(**kw) -> dict:
    now = int(time.time())
    return {
        "tenant": "acme",
        "models": ["m1"],
        "aud": "llmserve",
        "iss": "https://idp.example",
        "exp": now + 300,
        "nbf": now - 5,
        **kw,
    }


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_valid_tokens_of_each_algorithm(key_files):
    v = verifier(key_files)
    assert v.verify(jwt.encode(claims(), SECRET, "HS256")) == ("acme", frozenset({"m1"}))
    assert v.verify(jwt.encode(claims(), RSA_KEY, "RS256"))[0] == "acme"
    assert v.verify(jwt.encode(claims(models="m1 m2"), EC_KEY, "ES256")) == ("acme", frozenset({"m1", "m2"}))
    assert v.verify(jwt.encode(claims(models=None, sub="bob", tenant=None), SECRET, "HS256")) == ("bob", None)
    # 5 s past exp is inside the leeway
    assert v.verify(jwt.encode(claims(exp=int(time.time()) - 5), SECRET, "HS256"))[0] == "acme"


def test_jwks_keys_are_chosen_by_kid(key_files):
    v = verifier(key_files, jwt_public_key_paths=[], jwks_path=str(key_files / "jwks.json"))
    token = jwt.encode(claims(), RSA_KEY, "RS256", headers={"kid": "k1"})
    assert v.verify(token)[0] == "acme"
    with pytest.raises(Unauthenticated):
        v.verify(jwt.encode(claims(), RSA_KEY, "RS256", headers={"kid": "other"}))


def attacks() -> dict[str, str]:
    now = int(time.time())
    header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    valid = jwt.encode(claims(), SECRET, "HS256")
    h, p, s = valid.split(".")
    tampered_payload = b64(json.dumps(claims(tenant="root", models=None)).encode())
    return {
        "alg none": f"{header}.{b64(json.dumps(claims()).encode())}.",
        "HS256 signed with the RSA public key": _hs256_with(pem(RSA_KEY.public_key()), claims()),
        "expired": jwt.encode(claims(exp=now - 3600), SECRET, "HS256"),
        "not yet valid": jwt.encode(claims(nbf=now + 3600), SECRET, "HS256"),
        "wrong audience": jwt.encode(claims(aud="someone-else"), SECRET, "HS256"),
        "wrong issuer": jwt.encode(claims(iss="https://evil.example"), SECRET, "HS256"),
        "tampered payload": f"{h}.{tampered_payload}.{s}",
        "no exp": jwt.encode({k: v for k, v in claims().items() if k != "exp"}, SECRET, "HS256"),
        "unknown key": jwt.encode(claims(), rsa.generate_private_key(65537, 2048), "RS256"),
        "garbage": "a.b.c",
    }


def _hs256_with(secret: bytes, payload: dict) -> str:
    """The classic confusion attack, built by hand (PyJWT refuses to HMAC with a PEM key)."""
    signing_input = (
        f"{b64(json.dumps({'alg': 'HS256', 'typ': 'JWT'}).encode())}.{b64(json.dumps(payload).encode())}"
    )
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def test_attacks_and_bad_claims_are_unauthenticated(key_files):
    v = verifier(key_files)
    rs_only = verifier(key_files, jwt_algorithms=["RS256"])
    for name, token in attacks().items():
        for which in (v, rs_only):
            try:
                which.verify(token)
            except Unauthenticated:
                continue
            pytest.fail(f"{name}: accepted")


async def test_authenticator_routes_tokens_and_checks_models(key_files):
    auth = Authenticator(StaticKeys(["t1=static"]), None, verifier(key_files))
    identity = await auth.authenticate("Bearer " + jwt.encode(claims(), SECRET, "HS256"))
    identity.check_model("m1")
    with pytest.raises(PermissionDenied):
        identity.check_model("m2")
    assert (await auth.authenticate("Bearer static")).tenant == "t1"
    for bad in (None, "", "Basic xyz", "Bearer ", "Bearer nope", "Bearer llmsk_abc_def"):
        with pytest.raises(Unauthenticated):
            await auth.authenticate(bad)


async def test_stored_keys_are_hashed_listed_and_revoked_within_the_cache_time(redis_url):
    r = aioredis.Redis.from_url(redis_url)
    store, other_gateway = ApiKeyStore(r, cache_s=0.3), ApiKeyStore(r, cache_s=0.3)
    record, raw = await store.create("acme", models=["m1"], limits={"requests_per_minute": 5}, name="ci")
    auth = Authenticator(StaticKeys([]), other_gateway)
    identity = await auth.authenticate(f"Bearer {raw}")
    assert (
        identity.tenant == "acme" and identity.models == {"m1"} and identity.limits.requests_per_minute == 5
    )
    # only the digest is stored: the raw key (and its secret part) appears nowhere in Redis
    secret = raw.rsplit("_", 1)[1]
    for key in await r.keys("*"):
        dump = (
            json.dumps({k.decode(): v.decode() for k, v in (await r.hgetall(key)).items()})
            if await r.type(key) == b"hash"
            else str(await r.smembers(key))
        )
        assert raw not in dump and secret not in dump
    assert [k.key_id for k in await store.list()] == [record.key_id]
    assert "digest" not in record.public()
    with pytest.raises(Unauthenticated):  # right id, wrong secret
        await auth.authenticate(f"Bearer llmsk_{record.key_id}_{'x' * 43}")
    assert await store.revoke(record.key_id)
    await asyncio.sleep(0.35)
    with pytest.raises(Unauthenticated):
        await auth.authenticate(f"Bearer {raw}")
    assert await store.list() == []
    await r.aclose()
