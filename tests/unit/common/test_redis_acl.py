"""The per-service Redis ACL documented in docs/ops.md is the one the ACL test serves through,
and messages about REDIS_URL never show its password."""

from __future__ import annotations

import re
from pathlib import Path

from llmserve.common.redis_acl import ACL_RULES, describe

OPS = Path(__file__).resolve().parents[3] / "docs" / "ops.md"


def test_docs_list_exactly_the_rules_in_code():
    documented = dict(re.findall(r"^ACL SETUSER svc-(\w+)\s+on >PW (.+)$", OPS.read_text(), re.M))
    assert documented == ACL_RULES


def test_describe_hides_the_password():
    assert describe("redis://svc-worker:hunter2@redis:6380/0") == "redis://svc-worker@redis:6380/0"
    assert describe("rediss://:hunter2@redis/1") == "rediss://default@redis:6379/1"
    assert "hunter2" not in describe("redis://u:hunter2@h:1/0")
