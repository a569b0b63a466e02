"""Internal tokens: derivation, verification, tampering; the loopback rule when nothing
authenticates internal calls."""

from __future__ import annotations

import pytest

from llmserve.common.internal_auth import (
    SECRET_SETTING,
    Caller,
    InternalAuth,
    InternalAuthError,
    caller_from_common_name,
    is_loopback,
    mint_token,
    verify_token,
)
from llmserve.common.server import GrpcApp
from llmserve.scheduler.app import SchedulerService
from llmserve.scheduler.settings import SchedulerSettings

MASTER = "m" * 32


def test_a_token_proves_its_identity_and_nothing_else():
    token = mint_token(MASTER, "worker", "worker-50053")
    assert verify_token(MASTER, token) == Caller("worker", "worker-50053")
    assert verify_token("other" * 8, token) is None
    role_swapped = token.replace("v1.worker.", "v1.scheduler.", 1)
    id_swapped = token.replace("worker-50053", "worker-50063", 1)
    assert verify_token(MASTER, role_swapped) is None and verify_token(MASTER, id_swapped) is None
    assert verify_token(MASTER, token[:-1] + ("A" if token[-1] != "A" else "B")) is None


@pytest.mark.parametrize("bad", ["", "v1", "v1.worker", "v1.worker.w1", "v2.worker.w1.abc", "v1.root.w1.abc",
                                 "v1.worker..abc", "x" * 5000])
def test_malformed_tokens_are_refused(bad):
    assert verify_token(MASTER, bad) is None


def test_ids_may_contain_dots_and_roles_are_checked():
    assert verify_token(MASTER, mint_token(MASTER, "gateway", "gw.example.svc")) == Caller("gateway", "gw.example.svc")
    with pytest.raises(InternalAuthError):
        mint_token(MASTER, "admin", "x")
    assert caller_from_common_name("operator.alice") == Caller("operator", "alice")
    assert caller_from_common_name("alice") is None and caller_from_common_name("root.x") is None


def test_loopback_only_without_credentials():
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.0.0.9", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "10.0.0.3", "::", "gateway"))
    with pytest.raises(InternalAuthError, match=SECRET_SETTING):
        InternalAuth().check_bind("0.0.0.0", "the worker")
    InternalAuth(secret=MASTER).check_bind("0.0.0.0", "the worker")  # authenticated: any address


async def test_a_service_refuses_to_start_on_a_public_address_without_credentials(redis_url):
    settings = SchedulerSettings(redis_url=redis_url, host="0.0.0.0", port=0)
    with pytest.raises(InternalAuthError, match=SECRET_SETTING):
        await GrpcApp(SchedulerService(settings), settings).start()
    settings = SchedulerSettings(redis_url=redis_url, host="0.0.0.0", port=0, internal_secret=MASTER)
    async with GrpcApp(SchedulerService(settings), settings) as app:
        assert app.port > 0
