"""The rate limiter's Redis Lua scripts, each one atomic and on Redis's own clock (TIME).

Per tenant (keys share the `{tenant}` hash tag, so Redis Cluster keeps them on one slot):
- `window` zset: lease id -> admission time (ms); the sliding window of the per-minute limits.
- `tokens` hash: lease id -> tokens charged, plus `_sum`, the total inside the window.
- `streams` zset: lease id -> expiry time (ms); live leases are renewed by their gateway,
  so a crashed gateway's slots come back once they expire.
"""

from __future__ import annotations

from llmserve.common.redis_keys import PREFIX

# Answers of ACQUIRE: {code, value}. value is the admission time (0) or the retry delay in ms.
OK, OVER_RPM, OVER_TPM, OVER_STREAMS, TOO_LARGE = 0, 1, 2, 3, 4


def tenant_keys(tenant: str) -> list[str]:
    base = f"{PREFIX}:ratelimit:{{{tenant}}}"
    return [f"{base}:window", f"{base}:tokens", f"{base}:streams"]


_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: window, tokens, streams. ARGV: rpm, tpm, max streams, tokens, lease, window ms, lease ms.
ACQUIRE = (
    _NOW
    + """
local rpm, tpm, maxs = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local need, lease = tonumber(ARGV[4]), ARGV[5]
local window, lease_ms = tonumber(ARGV[6]), tonumber(ARGV[7])
-- age out the window, in slices: unpack() has a stack limit
while true do
  local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - window, 'LIMIT', 0, 500)
  if #old == 0 then break end
  local freed = 0
  for _, a in ipairs(redis.call('HMGET', KEYS[2], unpack(old))) do
    if a then freed = freed + tonumber(a) end
  end
  redis.call('HDEL', KEYS[2], unpack(old))
  redis.call('HINCRBY', KEYS[2], '_sum', -freed)
  redis.call('ZREM', KEYS[1], unpack(old))
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
if rpm > 0 then
  local n = redis.call('ZCARD', KEYS[1])
  if n >= rpm then
    local e = redis.call('ZRANGE', KEYS[1], n - rpm, n - rpm, 'WITHSCORES')
    return {1, tonumber(e[2]) + window - now}
  end
end
if tpm > 0 then
  if need > tpm then return {4, 0} end
  local sum = tonumber(redis.call('HGET', KEYS[2], '_sum') or '0')
  if sum + need > tpm then
    local excess, freed = sum + need - tpm, 0
    local entries = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
    for i = 1, #entries, 2 do
      freed = freed + tonumber(redis.call('HGET', KEYS[2], entries[i]) or '0')
      if freed >= excess then return {2, tonumber(entries[i + 1]) + window - now} end
    end
    return {2, window}
  end
end
if maxs > 0 and redis.call('ZCARD', KEYS[3]) >= maxs then
  local first = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
  return {3, math.min(1000, tonumber(first[2]) - now)}
end
redis.call('ZADD', KEYS[1], now, lease)
redis.call('HSET', KEYS[2], lease, need)
redis.call('HINCRBY', KEYS[2], '_sum', need)
redis.call('ZADD', KEYS[3], now + lease_ms, lease)
redis.call('PEXPIRE', KEYS[1], window + 1000)
redis.call('PEXPIRE', KEYS[2], window + 1000)
redis.call('PEXPIRE', KEYS[3], lease_ms + 1000)
return {0, 0}
"""
)

# KEYS: window, tokens, streams. ARGV: lease, tokens really used.
# Frees the concurrency slot; corrects the charge if the admission is still in the window.
RELEASE = """
redis.call('ZREM', KEYS[3], ARGV[1])
local charged = redis.call('HGET', KEYS[2], ARGV[1])
if charged then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
  redis.call('HINCRBY', KEYS[2], '_sum', tonumber(ARGV[2]) - tonumber(charged))
end
return 1
"""

# KEYS: streams zsets. ARGV: lease ms, then one lease id per key. Extends live leases only.
RENEW = (
    _NOW
    + """
local lease_ms = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, 'XX', now + lease_ms, ARGV[i + 1])
  redis.call('PEXPIRE', key, lease_ms + 1000)
end
return #KEYS
"""
)
