"""The rate limiter's Redis Lua scripts, each one atomic and on Redis's own clock (TIME).

Per tenant (keys share the `{tenant}` hash tag, so Redis Cluster keeps them on one slot):
- `window` zset: lease id -> admission time (ms); the sliding window of the per-minute limits.
- `tokens` hash: lease id -> tokens charged, plus `_sum`, the total inside the window.
- `streams` zset: lease id -> expiry time (ms); live leases are renewed by their gateway,
  so a crashed gateway's slots come back once they expire.

Each script takes a batch of requests of one tenant: a burst costs one call per tenant,
decided in order, as if the requests had come one by one.
"""

from __future__ import annotations

from llmserve.common.redis_keys import PREFIX

# Answers of ACQUIRE, per request: code, then the retry delay in ms (0 when admitted).
OK, OVER_RPM, OVER_TPM, OVER_STREAMS, TOO_LARGE = 0, 1, 2, 3, 4
ACQUIRE_FIELDS = 5  # rpm, tpm, max streams, tokens, lease id


def tenant_keys(tenant: str) -> list[str]:
    base = f"{PREFIX}:ratelimit:{{{tenant}}}"
    return [f"{base}:window", f"{base}:tokens", f"{base}:streams"]


_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: window, tokens, streams. ARGV: window ms, lease ms, then ACQUIRE_FIELDS per request.
ACQUIRE = (
    _NOW
    + """
local window, lease_ms = tonumber(ARGV[1]), tonumber(ARGV[2])
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
local n = redis.call('ZCARD', KEYS[1])
local sum = tonumber(redis.call('HGET', KEYS[2], '_sum') or '0')
local streams = redis.call('ZCARD', KEYS[3])
-- the window's entries (time, tokens), oldest first; loaded only when a retry delay is needed
local entries = nil
local function load()
  if entries then return end
  entries = {}
  local raw = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
  for i = 1, #raw, 2 do
    entries[#entries + 1] = {tonumber(raw[i + 1]), tonumber(redis.call('HGET', KEYS[2], raw[i]) or '0')}
  end
end
local function decide(rpm, tpm, maxs, need)
  if rpm > 0 and n >= rpm then
    load()
    return 1, entries[n - rpm + 1][1] + window - now
  end
  if tpm > 0 and need > tpm then return 4, 0 end
  if tpm > 0 and sum + need > tpm then
    load()
    local excess, freed = sum + need - tpm, 0
    for _, e in ipairs(entries) do
      freed = freed + e[2]
      if freed >= excess then return 2, e[1] + window - now end
    end
    return 2, window
  end
  if maxs > 0 and streams >= maxs then
    local first = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
    return 3, math.min(1000, tonumber(first[2]) - now)
  end
  return 0, 0
end
local out = {}
for i = 3, #ARGV, 5 do
  local need, lease = tonumber(ARGV[i + 3]), ARGV[i + 4]
  local code, value = decide(tonumber(ARGV[i]), tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]), need)
  if code == 0 then
    redis.call('ZADD', KEYS[1], now, lease)
    redis.call('HSET', KEYS[2], lease, need)
    redis.call('ZADD', KEYS[3], now + lease_ms, lease)
    n, sum, streams = n + 1, sum + need, streams + 1
    if entries then entries[#entries + 1] = {now, need} end
  end
  out[#out + 1] = code
  out[#out + 1] = value
end
redis.call('HSET', KEYS[2], '_sum', sum)
redis.call('PEXPIRE', KEYS[1], window + 1000)
redis.call('PEXPIRE', KEYS[2], window + 1000)
redis.call('PEXPIRE', KEYS[3], lease_ms + 1000)
return out
"""
)

# KEYS: window, tokens, streams. ARGV: pairs of lease id, tokens really used.
# Frees the concurrency slots; corrects a charge while its admission is still in the window.
RELEASE = """
for i = 1, #ARGV, 2 do
  redis.call('ZREM', KEYS[3], ARGV[i])
  local charged = redis.call('HGET', KEYS[2], ARGV[i])
  if charged then
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
    redis.call('HINCRBY', KEYS[2], '_sum', tonumber(ARGV[i + 1]) - tonumber(charged))
  end
end
return 1
"""

# KEYS: window, tokens, streams. ARGV: lease ms, then lease ids. Extends live leases only.
RENEW = (
    _NOW
    + """
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[3], 'XX', now + tonumber(ARGV[1]), ARGV[i])
end
redis.call('PEXPIRE', KEYS[3], tonumber(ARGV[1]) + 1000)
return 1
"""
)
