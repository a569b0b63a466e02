"""Hostile input over HTTP and gRPC: a table of bad requests with their documented statuses
(nothing written to Redis; a good request right after works), a hypothesis property that no
request field gets INTERNAL/UNKNOWN (HTTP 500), JWT verdicts over gRPC, and logs free of
keys and prompts."""

from __future__ import annotations

import asyncio
import json
import time

import grpc
import httpx
import jwt
import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmserve.gateway.routing.catalog import ModelCatalog
from llmserve.gateway.v1 import generation_pb2 as pb
from llmserve.gateway.v1 import generation_pb2_grpc
from tests.support.scripted_engine import ScriptedEngine
from tests.support.stack import API_KEY, MODEL, running_stack

AUTH = {"authorization": f"Bearer {API_KEY}"}
CHAT = "/v1/chat/completions"
SECRET = "j" * 32


@pytest.fixture(scope="module")
def catalog():
    return ModelCatalog.load([MODEL])


def chat(**kw) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **kw}


# (name, path, body (dict, or raw bytes), headers, status, words in the message)
BAD_HTTP = [
    ("no key", CHAT, chat(), {}, 401, "authorization"),
    ("wrong key", CHAT, chat(), {"authorization": "Bearer nope"}, 401, "invalid API key"),
    ("basic auth", CHAT, chat(), {"authorization": "Basic dTpw"}, 401, "Bearer"),
    ("not json", CHAT, b"{nope", AUTH, 400, "JSON"),
    ("json array", CHAT, b"[1, 2]", AUTH, 400, "JSON object"),
    ("no model", CHAT, chat(model=None), AUTH, 400, "model"),
    ("unknown model", CHAT, chat(model="gpt-17"), AUTH, 404, "gpt-17"),
    ("messages not a list", CHAT, chat(messages="hi"), AUTH, 400, "messages"),
    ("message without role", CHAT, chat(messages=[{"content": "hi"}]), AUTH, 400, "role"),
    ("bad role", CHAT, chat(messages=[{"role": "robot", "content": "hi"}]), AUTH, 400, "role"),
    ("content a number", CHAT, chat(messages=[{"role": "user", "content": 7}]), AUTH, 400, "content"),
    (
        "image part",
        CHAT,
        chat(messages=[{"role": "user", "content": [{"type": "image_url"}]}]),
        AUTH,
        400,
        "text parts",
    ),
    ("no messages", CHAT, chat(messages=[]), AUTH, 400, "messages"),
    ("max_tokens a string", CHAT, chat(max_tokens="9"), AUTH, 400, "max_tokens"),
    ("max_tokens a bool", CHAT, chat(max_tokens=True), AUTH, 400, "max_tokens"),
    ("max_tokens 0", CHAT, chat(max_tokens=0), AUTH, 400, "max_tokens"),
    ("max_tokens past context", CHAT, chat(max_tokens=9000), AUTH, 400, "context length"),
    ("temperature 3", CHAT, chat(temperature=3), AUTH, 400, "temperature"),
    ("temperature a string", CHAT, chat(temperature="hot"), AUTH, 400, "temperature"),
    ("top_p 0", CHAT, chat(top_p=0), AUTH, 400, "top_p"),
    ("stop of numbers", CHAT, chat(stop=[1, 2]), AUTH, 400, "stop"),
    ("too many stops", CHAT, chat(stop=list("abcde")), AUTH, 400, "max_stop_strings"),
    ("n 17", CHAT, chat(n=17), AUTH, 400, "n must be in [1, 16]"),
    ("negative seed", CHAT, chat(seed=-1), AUTH, 400, "seed"),
    ("seed past 2^64", CHAT, chat(seed=2**64), AUTH, 400, "seed"),
    ("stream a string", CHAT, chat(stream="yes"), AUTH, 400, "stream"),
    ("stream_options a list", CHAT, chat(stream=True, stream_options=[]), AUTH, 400, "stream_options"),
    (
        "body too large",
        CHAT,
        chat(messages=[{"role": "user", "content": "x" * 1_100_000}]),
        AUTH,
        413,
        "max_request_bytes",
    ),
    (
        "one message too large",
        CHAT,
        chat(messages=[{"role": "user", "content": "x" * 70_000}]),
        AUTH,
        400,
        "max_chat_message_bytes",
    ),
    (
        "lone surrogate",
        "/v1/completions",
        b'{"model": "%s", "prompt": "\\ud800"}' % MODEL.encode(),
        AUTH,
        400,
        "Unicode",
    ),
    ("empty prompt list", "/v1/completions", {"model": MODEL, "prompt": []}, AUTH, 400, "prompt"),
    ("bad request_id", CHAT, chat(request_id="has space"), AUTH, 400, "request_id"),
    ("bad priority", CHAT, chat(priority="urgent"), AUTH, 400, "priority"),
    ("bad timeout header", CHAT, chat(), {**AUTH, "x-request-timeout": "soon"}, 400, "x-request-timeout"),
    ("unknown path", "/v1/engines", chat(), AUTH, 404, "Not Found"),
]


async def post(http: httpx.AsyncClient, path: str, body, headers: dict) -> httpx.Response:
    if isinstance(body, bytes):
        return await http.post(path, content=body, headers={**headers, "content-type": "application/json"})
    return await http.post(path, json={k: v for k, v in body.items() if v is not None}, headers=headers)


async def test_bad_http_inputs_get_their_status_and_write_nothing(redis_url, catalog):
    engine = ScriptedEngine()
    async with (
        running_stack(redis_url, [engine], catalog) as stack,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{stack.gateway.service.http_port}", timeout=10) as http,
    ):
        assert len(BAD_HTTP) >= 25
        for name, path, body, headers, status, words in BAD_HTTP:
            response = await post(http, path, body, headers)
            assert response.status_code == status, (name, response.text)
            error = response.json()["error"]
            assert words in error["message"], (name, error)
            assert error["type"] and error["code"], name
        assert (await http.get(CHAT, headers=AUTH)).status_code == 405
        r = aioredis.Redis.from_url(redis_url)
        assert await r.keys("llmserve:request:*") == [] and await r.keys("llmserve:ratelimit:*") == []
        assert all([await r.xlen(k) == 0 for k in await r.keys("llmserve:requests:*")])
        await r.aclose()
        assert engine.seen == []
        ok = await post(http, CHAT, chat(), AUTH)
        assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 2


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
small_ints = st.integers(-3, 5) | st.integers(-(2**40), 2**40)
http_bodies = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from([MODEL, "", "nope"]) | json_values,
        "messages": st.lists(
            st.fixed_dictionaries(
                {
                    "role": st.sampled_from(["user", "system", "x"]) | json_values,
                    "content": st.text(max_size=30) | json_values,
                }
            ),
            max_size=3,
        )
        | json_values,
        "max_tokens": small_ints | json_values,
        "temperature": st.floats() | json_values,
        "top_p": st.floats() | json_values,
        "top_k": small_ints | json_values,
        "repetition_penalty": st.floats() | json_values,
        "stop": st.lists(st.text(max_size=70), max_size=6) | json_values,
        "seed": small_ints | json_values,
        "stream": st.booleans() | json_values,
        "n": small_ints | json_values,
        "request_id": st.text(max_size=10) | json_values,
        "priority": small_ints | json_values,
    },
)
grpc_requests = st.builds(
    lambda model, prompt, max_tokens, temperature, top_p, top_k, stop, seed, priority: pb.GenerateRequest(
        model=model,
        prompt=prompt,
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        stop=stop,
        seed=seed,
        priority=priority,
    ),
    st.sampled_from([MODEL, "", "nope"]),
    st.text(max_size=40),
    st.integers(-(2**31), 5),
    st.floats(width=32),
    st.floats(width=32),
    st.integers(-(2**31), 2**31 - 1),
    st.lists(st.text(max_size=70), max_size=6),
    st.integers(0, 2**64 - 1),
    st.integers(0, 5),
)


def run_properties(http_port: int, grpc_address: str) -> None:
    http = httpx.Client(base_url=f"http://127.0.0.1:{http_port}", headers=AUTH, timeout=20)
    channel = grpc.insecure_channel(grpc_address)
    stub = generation_pb2_grpc.GenerationServiceStub(channel)
    common = settings(max_examples=120, deadline=None, database=None, suppress_health_check=list(HealthCheck))

    @common
    @given(body=http_bodies)
    def http_never_500(body):
        response = http.post(CHAT, content=json.dumps(body), headers={"content-type": "application/json"})
        assert response.status_code != 500, response.text
        assert response.status_code == 200 or "error" in response.json()

    @common
    @given(request=grpc_requests)
    def grpc_never_internal(request):
        try:
            stub.Generate(request, metadata=tuple(AUTH.items()), timeout=20)
        except grpc.RpcError as e:
            assert e.code() not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), e.details()

    try:
        http_never_500()
        grpc_never_internal()
    finally:
        http.close()
        channel.close()


async def test_no_request_field_gets_internal_or_unknown(redis_url, catalog):
    async with running_stack(
        redis_url, [ScriptedEngine()], catalog, gateway_overrides={"requests_per_minute": 0}
    ) as stack:
        await asyncio.to_thread(run_properties, stack.gateway.service.http_port, stack.gateway_address)


def token(**kw) -> str:
    now = int(time.time())
    claims = {"tenant": "jwt-t", "models": [MODEL], "aud": "llmserve", "exp": now + 300, **kw}
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, SECRET, "HS256")


async def test_jwt_verdicts_over_grpc_and_logs_hold_no_key_or_prompt(redis_url, catalog, capfd):
    overrides = {"jwt_algorithms": ["HS256"], "jwt_hs256_secret": SECRET, "jwt_audience": "llmserve"}
    secret_prompt = "purple-elephant-7731 tells a secret"
    async with (
        running_stack(redis_url, [ScriptedEngine()], catalog, gateway_overrides=overrides) as stack,
        grpc.aio.insecure_channel(stack.gateway_address) as channel,
    ):
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        _, stored_key = await stack.gateway.service.keys.create("acme")

        async def code_of(bearer: str, model: str = MODEL):
            try:
                await stub.Generate(
                    pb.GenerateRequest(model=model, prompt=secret_prompt, max_tokens=2),
                    metadata=(("authorization", f"Bearer {bearer}"),),
                    timeout=10,
                )
            except grpc.aio.AioRpcError as e:
                return e.code()
            return grpc.StatusCode.OK

        now = int(time.time())
        assert await code_of(token()) == grpc.StatusCode.OK
        assert await code_of(stored_key) == grpc.StatusCode.OK
        for name, bad in {
            "expired": token(exp=now - 3600),
            "not yet valid": token(nbf=now + 3600),
            "wrong audience": token(aud="other"),
            "no tenant": token(tenant=None),
            "tampered": token().rsplit(".", 1)[0][:-2] + "xx." + token().rsplit(".", 1)[1],
        }.items():
            assert await code_of(bad) == grpc.StatusCode.UNAUTHENTICATED, name
        assert await code_of(token(models=["other-model"])) == grpc.StatusCode.PERMISSION_DENIED
    out, err = capfd.readouterr()
    logs = out + err
    assert "serving" in logs  # the run did log
    for secret in (
        stored_key,
        stored_key.rsplit("_", 1)[1],
        SECRET,
        token()[:40],
        secret_prompt,
        "purple-elephant",
    ):
        assert secret not in logs
