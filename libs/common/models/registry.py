"""The model registry in Redis: names, numbered versions, aliases, rollback.

A model name owns versions `v1`, `v2`, ... (path, format, dtype, quantization, sha256 of the
weights, created_at, the version it was derived from and any measured metrics). Aliases point
at one version; `active` is the one a worker serves when asked for the bare name. Moving an
alias pushes its old version onto a history list, and `rollback` pops it, so a bad version is
taken back in one atomic step. An alias may also carry a traffic split ({version: percent}
sent elsewhere, for A/B tests and canaries); `set_split`/`clear_split` change it atomically,
and every clear is appended to the model's event list (who cleared it and why).
Keys are documented in `llmserve.common.redis_keys`.

Paths are stored as given (resolved to absolute): the registry records where weights live, it
does not copy them, so every worker must see the same path (shared disk or a synced cache).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from redis import exceptions as redis_errors

from llmserve.common import redis_keys as keys
from llmserve.common.errors import InvalidArgument, ModelNotFound

from .formats import INT8, detect_format, weights_checksum

ACTIVE = "active"
HISTORY_LIMIT = 50  # rollback depth kept per alias
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_VERSION_RE = re.compile(r"^v[0-9]+$")

# Both scripts run atomically, so two operators activating at once cannot lose a history entry.
_ACTIVATE = """
if redis.call('HEXISTS', KEYS[1], ARGV[2]) == 0 then return redis.error_reply('NOVERSION') end
local cur = redis.call('HGET', KEYS[2], ARGV[1])
if cur then
  local prev = cjson.decode(cur)['version']
  if prev == ARGV[2] then return cur end
  redis.call('LPUSH', KEYS[3], prev)
  redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[4]) - 1)
end
local rec = cjson.encode({version=ARGV[2], updated_at=tonumber(ARGV[3])})
redis.call('HSET', KEYS[2], ARGV[1], rec)
return rec
"""

_ROLLBACK = """
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0 then return redis.error_reply('NOALIAS') end
local prev = redis.call('LPOP', KEYS[3])
if not prev then return redis.error_reply('NOHISTORY') end
local rec = cjson.encode({version=prev, updated_at=tonumber(ARGV[2])})
redis.call('HSET', KEYS[2], ARGV[1], rec)
return rec
"""

# ARGV: alias, split JSON, now. Every split version must exist and differ from the target.
_SET_SPLIT = """
local cur = redis.call('HGET', KEYS[2], ARGV[1])
if not cur then return redis.error_reply('NOALIAS') end
local rec = cjson.decode(cur)
local split = cjson.decode(ARGV[2])
for v, _ in pairs(split) do
  if v == rec['version'] then return redis.error_reply('SAMEVERSION ' .. v) end
  if redis.call('HEXISTS', KEYS[1], v) == 0 then return redis.error_reply('NOVERSION ' .. v) end
end
rec['split'] = split
rec['updated_at'] = tonumber(ARGV[3])
local out = cjson.encode(rec)
redis.call('HSET', KEYS[2], ARGV[1], out)
return out
"""

# ARGV: alias, version ('' = all), now, event JSON, event limit. Returns false when the split
# held no such version, so two monitors judging the same split act (and log) once.
_CLEAR_SPLIT = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return redis.error_reply('NOALIAS') end
local rec = cjson.decode(cur)
local split = rec['split']
if type(split) ~= 'table' or next(split) == nil then return false end
if ARGV[2] == '' then split = {} else
  if split[ARGV[2]] == nil then return false end
  split[ARGV[2]] = nil
end
rec['split'] = split
rec['updated_at'] = tonumber(ARGV[3])
local out = cjson.encode(rec)
redis.call('HSET', KEYS[1], ARGV[1], out)
redis.call('LPUSH', KEYS[2], ARGV[4])
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[5]) - 1)
return out
"""
EVENTS_LIMIT = 100


@dataclass
class ModelVersion:
    """One registered set of weights."""

    name: str
    version: str
    path: str
    format: str
    dtype: str
    quantization: str
    checksum: str
    created_at: float
    parent: str | None = None
    """`name@version` this one was derived from (quantize, prune), if any."""
    metrics: dict = field(default_factory=dict)
    """Measured facts recorded at registration (sparsity, perplexity, ...)."""

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, raw: str | bytes) -> ModelVersion:
        return cls(**json.loads(raw))


@dataclass
class Alias:
    """A movable pointer at a version; `split` sends a share of traffic elsewhere."""

    name: str
    version: str
    updated_at: float
    split: dict[str, float] = field(default_factory=dict)
    """{version: percent} routed away from `version` (A/B, canary); empty means all traffic to
    `version`. `set_split` sets it; activate and rollback reset it."""

    @classmethod
    def from_json(cls, alias: str, raw: str | bytes) -> Alias:
        data = json.loads(raw)
        split = data.get("split") or {}  # Lua's cjson writes an empty table as {} or []
        return cls(alias, data["version"], float(data["updated_at"]), dict(split))


def parse_ref(ref: str) -> tuple[str, str]:
    """`name`, `name@v3` or `name@canary` -> (name, version or alias); bare names mean active."""
    name, _, target = ref.partition("@")
    check_name(name)
    return name, target or ACTIVE


def check_split(split: dict[str, float]) -> dict[str, float]:
    """Versions look like `v3`, each percent is in [0, 100] and together they are at most 100."""
    out = {}
    for version, percent in split.items():
        if not _VERSION_RE.match(str(version)):
            raise InvalidArgument(f"split version {version!r} must look like v3")
        try:
            value = float(percent)
        except (TypeError, ValueError):
            raise InvalidArgument(f"split percent of {version} must be a number; got {percent!r}") from None
        if not 0 <= value <= 100:
            raise InvalidArgument(f"split percent of {version} must be in [0, 100]; got {percent}")
        out[str(version)] = int(value) if value.is_integer() else value
    if sum(out.values()) > 100:
        raise InvalidArgument(f"split percents add up to {sum(out.values()):g}; at most 100 is allowed")
    return out


def _raise_split_error(name: str, alias: str, message: str) -> None:
    if "NOALIAS" in message:
        raise ModelNotFound(f"model {name!r} has no alias {alias!r} (activate a version first)") from None
    if "NOVERSION" in message:
        raise ModelNotFound(f"model {name!r} has no version {message.split()[-1]!r}") from None
    if "SAMEVERSION" in message:
        raise InvalidArgument(
            f"{name}@{alias} already points at {message.split()[-1]}; a split names the other versions"
        ) from None


def check_name(name: str) -> None:
    if not _NAME_RE.match(name):
        raise InvalidArgument(f"model name {name!r} must match {_NAME_RE.pattern} (no '@', braces or '/')")


class ModelRegistry:
    """Async access to the registry over one `redis.asyncio.Redis` client (not owned)."""

    def __init__(self, redis):
        self.redis = redis
        self._activate = redis.register_script(_ACTIVATE)
        self._rollback = redis.register_script(_ROLLBACK)
        self._set_split = redis.register_script(_SET_SPLIT)
        self._clear_split = redis.register_script(_CLEAR_SPLIT)

    async def register(
        self,
        name: str,
        path: str | Path,
        *,
        format: str | None = None,
        dtype: str | None = None,
        quantization: str | None = None,
        parent: str | None = None,
        metrics: dict | None = None,
        activate: bool = False,
    ) -> ModelVersion:
        """Record `path` as the next version of `name` (checksumming its weights)."""
        check_name(name)
        path = Path(path).expanduser().resolve()
        fmt = format or detect_format(path)
        checksum = await asyncio.to_thread(weights_checksum, path)
        number = await self.redis.incr(keys.model_seq_key(name))
        version = ModelVersion(
            name=name, version=f"v{number}", path=str(path), format=fmt,
            dtype=dtype or _guess_dtype(path, fmt), quantization=quantization or _guess_quant(fmt),
            checksum=checksum, created_at=time.time(), parent=parent, metrics=metrics or {},
        )  # fmt: skip
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.model_versions_key(name), version.version, version.to_json())
            pipe.sadd(keys.MODELS_SET, name)
            await pipe.execute()
        if activate:
            await self.activate(name, version.version)
        return version

    async def list_models(self) -> list[str]:
        """Names of all registered models, sorted."""
        return sorted(_s(n) for n in await self.redis.smembers(keys.MODELS_SET))

    async def versions(self, name: str) -> list[ModelVersion]:
        """All versions of `name`, oldest first."""
        raw = await self.redis.hvals(keys.model_versions_key(name))
        return sorted((ModelVersion.from_json(r) for r in raw), key=lambda v: int(v.version[1:]))

    async def get(self, name: str, version: str) -> ModelVersion:
        raw = await self.redis.hget(keys.model_versions_key(name), version)
        if raw is None:
            raise ModelNotFound(f"model {name!r} has no version {version!r}")
        return ModelVersion.from_json(raw)

    async def aliases(self, name: str) -> dict[str, Alias]:
        return _parse_aliases(await self.redis.hgetall(keys.model_aliases_key(name)))

    async def all_aliases(self) -> dict[str, dict[str, Alias]]:
        """Every registered model's aliases, in one round trip after the name list."""
        names = await self.list_models()
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(keys.model_aliases_key(name))
            raws = await pipe.execute()
        return {name: _parse_aliases(raw) for name, raw in zip(names, raws, strict=True)}

    async def history(self, name: str, alias: str = ACTIVE) -> list[str]:
        """Versions `alias` pointed at before, newest first (what rollback walks back through)."""
        return [_s(v) for v in await self.redis.lrange(keys.model_history_key(name, alias), 0, -1)]

    async def activate(self, name: str, version: str, alias: str = ACTIVE) -> Alias:
        """Point `alias` at `version`; the version it left is remembered for rollback."""
        check_name(alias)
        if _VERSION_RE.match(alias):
            raise InvalidArgument(f"alias {alias!r} looks like a version id; pick another name")
        try:
            raw = await self._activate(
                keys=self._alias_keys(name, alias), args=[alias, version, time.time(), HISTORY_LIMIT]
            )
        except redis_errors.ResponseError as e:
            if "NOVERSION" in str(e):
                raise ModelNotFound(f"model {name!r} has no version {version!r}") from None
            raise
        return Alias.from_json(alias, raw)

    async def rollback(self, name: str, alias: str = ACTIVE) -> Alias:
        """Move `alias` back to the version it pointed at before the last activate."""
        try:
            raw = await self._rollback(keys=self._alias_keys(name, alias), args=[alias, time.time()])
        except redis_errors.ResponseError as e:
            if "NOALIAS" in str(e):
                raise ModelNotFound(f"model {name!r} has no alias {alias!r}") from None
            if "NOHISTORY" in str(e):
                raise InvalidArgument(f"{name}@{alias} has no earlier version to roll back to") from None
            raise
        return Alias.from_json(alias, raw)

    async def set_split(self, name: str, split: dict[str, float], alias: str = ACTIVE) -> Alias:
        """Send `percent` of `alias`'s traffic to each version in `split`; the rest stays on the
        alias's own version. Replaces any earlier split; `{}` clears it (no event recorded)."""
        split = check_split(split)
        try:
            raw = await self._set_split(
                keys=self._alias_keys(name, alias)[:2], args=[alias, json.dumps(split), time.time()]
            )
        except redis_errors.ResponseError as e:
            _raise_split_error(name, alias, str(e))
            raise
        return Alias.from_json(alias, raw)

    async def clear_split(
        self,
        name: str,
        alias: str = ACTIVE,
        version: str | None = None,
        *,
        by: str = "operator",
        reason: str = "",
    ) -> Alias | None:
        """Take `version` (default: every version) out of `alias`'s split, so its share goes back
        to the alias's own version, and record who did it and why. None when there was nothing
        to take out (another caller was first, or no split is set)."""
        event = {"at": time.time(), "action": "clear_split", "alias": alias, "version": version or "*",
                 "by": by, "reason": reason}  # fmt: skip
        try:
            raw = await self._clear_split(
                keys=[keys.model_aliases_key(name), keys.model_events_key(name)],
                args=[alias, version or "", event["at"], json.dumps(event), EVENTS_LIMIT],
            )
        except redis_errors.ResponseError as e:
            _raise_split_error(name, alias, str(e))
            raise
        return None if raw is None else Alias.from_json(alias, raw)

    async def events(self, name: str) -> list[dict]:
        """Split changes recorded by `clear_split` (automatic rollbacks included), newest first."""
        return [json.loads(r) for r in await self.redis.lrange(keys.model_events_key(name), 0, -1)]

    async def resolve(self, ref: str) -> ModelVersion:
        """The version a reference names: `name` (active), `name@v3` or `name@<alias>`."""
        name, target = parse_ref(ref)
        if _VERSION_RE.match(target):
            return await self.get(name, target)
        raw = await self.redis.hget(keys.model_aliases_key(name), target)
        if raw is None:
            raise ModelNotFound(f"model {name!r} has no alias {target!r} (activate a version first)")
        return await self.get(name, Alias.from_json(target, raw).version)

    def _alias_keys(self, name: str, alias: str) -> list[str]:
        return [
            keys.model_versions_key(name),
            keys.model_aliases_key(name),
            keys.model_history_key(name, alias),
        ]


def _parse_aliases(raw: dict) -> dict[str, Alias]:
    return {_s(a): Alias.from_json(_s(a), r) for a, r in sorted(raw.items())}


def _s(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _guess_dtype(path: Path, fmt: str) -> str:
    if fmt == INT8:
        return "qint8"
    config = path / "config.json" if path.is_dir() else path.parent / "config.json"
    if config.is_file():
        data = json.loads(config.read_text())
        return str(data.get("dtype") or data.get("torch_dtype") or "float32")
    return "float32"


def _guess_quant(fmt: str) -> str:
    # GGUF files carry their own block quantization; loading dequantizes them to fp32.
    return {"int8": "int8-dynamic", "gguf": "gguf"}.get(fmt, "none")
