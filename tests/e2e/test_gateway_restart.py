"""A gateway restarted under load: every request the new process accepts completes exactly.

Real processes (Redis, scheduler, worker with the real model, gateway). Before the token-sink
link was sequenced, a worker's reconnects to the restarted gateway left request generators
behind that swallowed later chunks: the new gateway logged `token gap` and its requests hung
until their deadline.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from llmserve.cli.redis_server import RedisServer
from llmserve.cli.suite import LocalSuite, Ports
from tests.support.chaos import PROMPTS, StreamResult, check_stream, reference_texts, run_stream

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
STREAMS, NEW_PER_S, AFTER_RESTART_S = 8, 2, 8


def _start(address: str, api_key: str, prompt: str) -> tuple[StreamResult, threading.Thread, float]:
    result = StreamResult(prompt)
    thread = threading.Thread(target=run_stream, args=(address, api_key, prompt, result))
    thread.start()
    return result, thread, time.monotonic()


@pytest.fixture(scope="module")
def running_suite(tmp_path_factory):
    """One suite for both signals: the second restart is of a gateway that was itself restarted,
    under the same load and checks (a fresh suite per signal only repeated its start-up)."""
    with RedisServer() as redis:
        suite = LocalSuite(ports=Ports.free(), redis_url=redis.url, log_dir=tmp_path_factory.mktemp("logs"),
                           with_monitor=False)
        try:
            suite.start(timeout=240)
            yield suite, reference_texts(suite), {"log_from": 0}
        finally:
            suite.stop()


@pytest.mark.timeout(600)
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill", "term"])
def test_a_gateway_restarted_under_load_loses_no_chunk(running_suite, sig):
    suite, references, unchecked = running_suite
    suite.wait_serving(timeout=60)  # the previous signal's restarted gateway, if any, is up
    address = f"127.0.0.1:{suite.ports.gateway}"
    # The first signal checks the whole log, as with a suite of its own; the next, only its part.
    log_start = unchecked.pop("log_from", (suite.log_dir / "gateway.log").stat().st_size)
    before = [_start(address, suite.api_key, PROMPTS[i % len(PROMPTS)]) for i in range(STREAMS)]
    while not any(len(r.indexes) >= 2 for r, _, _ in before):
        time.sleep(0.01)

    gateway = next(s for s in suite.services if s.name == "gateway")
    os.kill(gateway.process.pid, sig)
    gateway.process.wait(60)
    suite.services.remove(gateway)
    restarted = suite.spawn("gateway", "llmserve.gateway", suite.ports.gateway)

    after: list[tuple[StreamResult, threading.Thread, float]] = []
    ready_at = None
    stop_at = time.monotonic() + 240
    while time.monotonic() < stop_at:
        if ready_at is None and _serving(suite):
            ready_at = time.monotonic()
            stop_at = ready_at + AFTER_RESTART_S
        after.append(_start(address, suite.api_key, PROMPTS[len(after) % len(PROMPTS)]))
        time.sleep(1 / NEW_PER_S)
    assert ready_at is not None, "the restarted gateway never served"

    for _, thread, _ in before + after:
        thread.join(180)
    # The old gateway's clients lost their connection with it (re-attach is another
    # feature); the new one's must all complete exactly.
    for r, _, _ in before:
        assert check_stream(r, references[r.prompt]) is None or r.error.startswith("UNAVAILABLE"), r
    accepted = [(r, t0) for r, _, t0 in after if not (r.error or "").startswith("UNAVAILABLE")]
    assert all(t0 < ready_at for r, _, t0 in after if r.error and r.error.startswith("UNAVAILABLE")), \
        "a request sent to the SERVING gateway was refused"
    assert len(accepted) >= AFTER_RESTART_S * NEW_PER_S
    problems = [check_stream(r, references[r.prompt]) for r, _ in accepted]
    assert [p for p in problems if p] == []
    log = restarted.log_path.read_bytes()[log_start:].decode(errors="replace")
    assert "token gap" not in log


def _serving(suite: LocalSuite) -> bool:
    try:
        suite.wait_serving(timeout=0.3)
        return True
    except (TimeoutError, RuntimeError):
        return False
