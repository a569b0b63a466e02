"""`redis+sentinel://` URLs: parsed into Sentinel targets, malformed ones refused at start."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from llmserve.common.redis_acl import describe
from llmserve.common.redis_client import SentinelTarget, parse_sentinel_url
from llmserve.common.settings import ServiceSettings


def test_a_plain_url_is_not_a_sentinel_target():
    assert parse_sentinel_url("redis://127.0.0.1:6379/0") is None
    assert parse_sentinel_url("rediss://u:p@host:6380/1") is None


def test_a_sentinel_url_names_hosts_master_db_and_credentials():
    target = parse_sentinel_url("redis+sentinel://svc:s%40cret@10.0.0.1:26379,[::1]:26380/prod/3"
                                "?sentinel_password=sp")
    assert target == SentinelTarget(sentinels=(("10.0.0.1", 26379), ("::1", 26380)), master="prod", db=3,
                                    username="svc", password="s@cret", sentinel_password="sp")
    assert parse_sentinel_url("redis+sentinel://h:1/m").db == 0


@pytest.mark.parametrize("url,problem", [
    ("redis+sentinel://host/m", "host:port"),
    ("redis+sentinel:///m", "at least one Sentinel"),
    ("redis+sentinel://h:1", "/<master name>"),
    ("redis+sentinel://h:1/m/x", "/<master name>"),
])
def test_a_malformed_sentinel_url_fails_at_start_naming_the_problem(url, problem):
    with pytest.raises(ValidationError, match="redis_url") as info:
        ServiceSettings(redis_url=url)
    assert problem in str(info.value)


def test_messages_show_a_sentinel_url_without_its_password():
    shown = describe("redis+sentinel://svc:secret@h1:1,h2:2/prod/0")
    assert "secret" not in shown and shown == "redis+sentinel://svc@h1:1,h2:2/prod"
