"""Redis with `requirepass` and one ACL user per service (the documented minimal rules): the
whole suite serves through it, the CLI reads through its own user, and a wrong password stops
a service at start with a clear error."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest
import redis

from llmserve.cli.redis_server import RedisServer
from llmserve.cli.status import collect
from llmserve.cli.suite import LocalSuite, Ports
from llmserve.client import Client
from llmserve.common.model_store import DEFAULT_MODEL
from llmserve.common.redis_acl import ACL_RULES

ADMIN_PASSWORD = "admin-pw-Zx81"


@pytest.mark.timeout(600)
def test_the_suite_serves_through_acl_users_and_a_wrong_password_fails_at_start(tmp_path):
    with RedisServer(password=ADMIN_PASSWORD) as server:
        # The default user now needs the password: no anonymous access.
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=server.port).ping()
        urls = {name: server.add_user(f"svc-{name}", f"pw-{name}", rules) for name, rules in ACL_RULES.items()}
        suite = LocalSuite(ports=Ports.free(), redis_url=urls["cli"], log_dir=tmp_path, workers=1,
                           service_env={name: {"REDIS_URL": urls[name]} for name in urls if name != "cli"})
        try:
            suite.start(timeout=240)
            with Client(f"127.0.0.1:{suite.ports.gateway}", api_key=suite.api_key, timeout=120) as client:
                reply = client.generate(DEFAULT_MODEL, "The capital of France is", max_tokens=6, temperature=0.0)
            assert reply.completion_tokens == 6 and reply.text
            report = asyncio.run(collect(urls["cli"], f"127.0.0.1:{suite.ports.scheduler}",
                                         f"127.0.0.1:{suite.ports.monitor}"))
            assert not report.errors.get("redis"), report.errors
            assert [w.worker_id for w in report.workers] == [f"worker-{suite.ports.worker}"]
            for service in suite.services:
                log = service.log_path.read_text(errors="replace")
                assert "NOPERM" not in log and "refused the credentials" not in log, (service.name, log[-2000:])
        finally:
            suite.stop()

        wrong = server.user_url("svc-scheduler", "not-the-password")
        env = dict(os.environ, REDIS_URL=wrong, LLMSERVE_SCHEDULER_PORT="0", LLMSERVE_OTLP_ENDPOINT="")
        done = subprocess.run([sys.executable, "-m", "llmserve.scheduler"], env=env, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode != 0
        out = done.stdout + done.stderr
        assert "refused the credentials in REDIS_URL" in out and "svc-scheduler@127.0.0.1" in out, out[-2000:]
        assert "not-the-password" not in out
