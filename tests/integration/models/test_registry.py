"""The model registry against a real Redis: versions, aliases, activate, rollback."""

import pytest
import redis.asyncio as aioredis

from llmserve.common import redis_keys
from llmserve.common.errors import InvalidArgument, ModelNotFound
from llmserve.common.models import formats
from llmserve.common.models.registry import ModelRegistry


@pytest.fixture
async def registry(redis_url):
    client = aioredis.Redis.from_url(redis_url)
    yield ModelRegistry(client)
    await client.aclose()


async def test_register_records_path_format_dtype_and_checksum(registry, tiny_dir):
    v1 = await registry.register("tiny", tiny_dir)
    assert (v1.name, v1.version, v1.format, v1.quantization) == ("tiny", "v1", "hf", "none")
    assert v1.dtype == "float32"
    assert v1.checksum == formats.file_sha256(tiny_dir / "model.safetensors")
    assert v1.path == str(tiny_dir.resolve())
    v2 = await registry.register("tiny", tiny_dir, quantization="int8-dynamic", metrics={"ppl": 1.5})
    assert v2.version == "v2"
    assert [v.version for v in await registry.versions("tiny")] == ["v1", "v2"]
    assert (await registry.get("tiny", "v2")).metrics == {"ppl": 1.5}
    assert await registry.list_models() == ["tiny"]
    assert await registry.redis.exists(redis_keys.model_versions_key("tiny"))


async def test_activate_and_rollback_walk_the_history(registry, tiny_dir):
    for _ in range(3):
        await registry.register("m", tiny_dir)
    with pytest.raises(ModelNotFound):
        await registry.resolve("m")  # nothing active yet
    await registry.activate("m", "v1")
    await registry.activate("m", "v2")
    await registry.activate("m", "v2")  # re-activating the active version adds no history
    await registry.activate("m", "v3")
    assert (await registry.resolve("m")).version == "v3"
    assert await registry.history("m") == ["v2", "v1"]
    assert (await registry.rollback("m")).version == "v2"
    assert (await registry.rollback("m")).version == "v1"
    assert (await registry.resolve("m@active")).version == "v1"
    with pytest.raises(InvalidArgument, match="no earlier version"):
        await registry.rollback("m")


async def test_aliases_are_independent(registry, tiny_dir):
    await registry.register("m", tiny_dir, activate=True)
    await registry.register("m", tiny_dir)
    await registry.activate("m", "v2", alias="canary")
    aliases = await registry.aliases("m")
    assert {a: x.version for a, x in aliases.items()} == {"active": "v1", "canary": "v2"}
    assert aliases["canary"].split == {}
    assert (await registry.resolve("m@canary")).version == "v2"
    assert (await registry.resolve("m@v1")).version == "v1"
    with pytest.raises(ModelNotFound):
        await registry.rollback("m", alias="nope")


async def test_unknown_versions_and_bad_names_are_refused(registry, tiny_dir):
    await registry.register("m", tiny_dir)
    with pytest.raises(ModelNotFound):
        await registry.activate("m", "v9")
    with pytest.raises(ModelNotFound):
        await registry.resolve("m@v9")
    with pytest.raises(InvalidArgument):
        await registry.register("bad{name}", tiny_dir)
    with pytest.raises(InvalidArgument):
        await registry.activate("m", "v1", alias="v2")
