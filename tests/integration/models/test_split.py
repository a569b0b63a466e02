"""Traffic splits in the registry (real Redis): validation, reset by activate/rollback, clearing
with a recorded event, and `llmserve models split`."""

import json

import pytest
import redis.asyncio as aioredis

from llmserve.cli.main import main
from llmserve.common.errors import InvalidArgument, ModelNotFound
from llmserve.common.models.registry import ModelRegistry


@pytest.fixture
async def registry(redis_url, tiny_dir):
    client = aioredis.Redis.from_url(redis_url)
    reg = ModelRegistry(client)
    for _ in range(3):
        await reg.register("m", tiny_dir)
    yield reg
    await client.aclose()


async def test_set_split_validates_versions_and_percents(registry):
    with pytest.raises(ModelNotFound, match="no alias"):
        await registry.set_split("m", {"v2": 10})  # nothing active yet
    await registry.activate("m", "v1")
    bad = [
        ({"v9": 10}, ModelNotFound, "no version 'v9'"),
        ({"v1": 10}, InvalidArgument, "already points at v1"),
        ({"v2": 60, "v3": 50}, InvalidArgument, "add up to 110"),
        ({"v2": -1}, InvalidArgument, r"in \[0, 100\]"),
        ({"v2": 101}, InvalidArgument, r"in \[0, 100\]"),
        ({"v2": "ten"}, InvalidArgument, "must be a number"),
        ({"latest": 10}, InvalidArgument, "must look like v3"),
    ]
    for split, error, message in bad:
        with pytest.raises(error, match=message):
            await registry.set_split("m", split)
    assert (await registry.aliases("m"))["active"].split == {}  # nothing half-written
    alias = await registry.set_split("m", {"v2": 20, "v3": 2.5})
    assert (alias.version, alias.split) == ("v1", {"v2": 20, "v3": 2.5})
    assert (await registry.aliases("m"))["active"].split == {"v2": 20, "v3": 2.5}
    assert (await registry.set_split("m", {"v3": 100})).split == {"v3": 100}  # replaces


async def test_activate_and_rollback_reset_the_split(registry):
    await registry.activate("m", "v1")
    await registry.set_split("m", {"v2": 20})
    assert (await registry.activate("m", "v2")).split == {}
    await registry.set_split("m", {"v3": 5})
    assert (await registry.aliases("m"))["active"].split == {"v3": 5}
    rolled = await registry.rollback("m")
    assert (rolled.version, rolled.split) == ("v1", {})


async def test_clear_split_takes_one_version_out_once_and_records_it(registry):
    await registry.activate("m", "v1")
    await registry.set_split("m", {"v2": 20, "v3": 5})
    alias = await registry.clear_split("m", version="v2", by="monitor:R", reason="TTFT p95 x3")
    assert (alias.version, alias.split) == ("v1", {"v3": 5})
    assert await registry.clear_split("m", version="v2") is None  # already out: no second event
    assert (await registry.clear_split("m", by="cli")).split == {}
    assert await registry.clear_split("m") is None
    events = await registry.events("m")
    assert [(e["version"], e["by"], e["reason"]) for e in events] == [
        ("*", "cli", ""),
        ("v2", "monitor:R", "TTFT p95 x3"),
    ]
    with pytest.raises(ModelNotFound):
        await registry.clear_split("m", alias="canary")


def test_cli_split_and_clear(capsys, redis_url, tiny_dir):
    def run(*argv) -> tuple[int, str]:
        code = main(["models", *argv, "--redis-url", redis_url])
        out, err = capsys.readouterr()
        return code, out + err

    run("register", "tiny", str(tiny_dir), "--activate")
    run("register", "tiny", str(tiny_dir))
    code, out = run("split", "tiny", "v2=20")
    assert code == 0 and "tiny@active -> v1 (split: v2 20%)" in out, out
    code, out = run("split", "tiny", "v2=20", "--json")
    assert code == 0 and json.loads(out)["split"] == {"v2": 20}
    code, out = run("split", "tiny", "v2=120")
    assert code == 1 and "[0, 100]" in out
    code, out = run("split", "tiny", "v2")
    assert code == 1 and "VERSION=PCT" in out
    code, out = run("split", "tiny", "--clear")
    assert code == 0 and out.strip() == "tiny@active -> v1"
