"""Fair share by tokens, with one virtual clock per (model, priority class) in Redis.

Start-time fair queuing: each tenant has a finish tag `F`; the class has a virtual time `V`.
A tenant's next request starts at `max(F, V)` (an idle tenant rejoins at `V`, so it cannot
bank credit); dispatching it moves `F` to start + cost / weight and `V` to that start. The
cost is prompt + max_tokens at dispatch; when the request ends the worker refunds the output
it did not produce, so the charge is what really ran. (The scheduler's `fair_share_unit:
requests` charges 1 per request instead, with nothing to refund: the old accounting, kept
as a setting so the two can be compared.)

Every scheduler replica updates the same hash atomically in its dispatch script, and each one
marks the tenants it holds work for (`h:<scheduler>\\t<tenant>` = last seen, unix ms): a
replica may only dispatch for a tenant whose start tag is the lowest among tenants held by
any live replica, so N replicas give the order one would. Marks older than a few rounds are
ignored (a dead replica blocks nobody for long).

Hash fields: `V`, `f:<tenant>` (finish tags), `h:<scheduler>\\t<tenant>` (held marks).
"""

from __future__ import annotations

import redis.asyncio as aioredis

from . import redis_keys as keys

# Run inside the scheduler's dispatch script (see services/scheduler/dispatch.py): the
# eligibility check before anything moves, the charge after the hand-over.
ELIGIBLE_LUA = """
local function start_of(state, tenant)
  local f = tonumber(state['f:' .. tenant] or '0')
  local v = tonumber(state['V'] or '0')
  if f > v then return f end
  return v
end
local function fair_state(key)
  local flat = redis.call('HGETALL', key)
  local state = {}
  for i = 1, #flat, 2 do state[flat[i]] = flat[i + 1] end
  return state
end
local function eligible(key, tenant, held_field, now, stale)
  redis.call('HSET', key, held_field, now)
  local state = fair_state(key)
  local mine = start_of(state, tenant)
  for field, seen in pairs(state) do
    if string.sub(field, 1, 2) == 'h:' then
      if now - tonumber(seen) > stale then
        redis.call('HDEL', key, field)
      else
        local other = string.match(field, '\\t(.*)$')
        if other and start_of(state, other) < mine - 1e-9 then return nil end
      end
    end
  end
  return mine
end
local function charge(key, tenant, start, cost)
  redis.call('HSET', key, 'f:' .. tenant, tostring(start + cost))
  local v = tonumber(redis.call('HGET', key, 'V') or '0')
  if start > v then redis.call('HSET', key, 'V', tostring(start)) end
end
"""

# A finished request gives back the output it was charged for but never produced. The
# request hash says what was charged (set at dispatch); the fields go, so it runs once.
_REFUND = """
local per_token = redis.call('HGET', KEYS[1], 'fair_per_token')
if not per_token then return 0 end
local max_out = tonumber(redis.call('HGET', KEYS[1], 'fair_max_out') or '0')
local unused = max_out - tonumber(ARGV[2])
redis.call('HDEL', KEYS[1], 'fair_per_token', 'fair_max_out')
if unused <= 0 then return 0 end
redis.call('HINCRBYFLOAT', KEYS[2], 'f:' .. ARGV[1], -unused * tonumber(per_token))
return 1
"""


def cost(need_tokens: int, max_out: int, unit: str) -> tuple[int, int]:
    """(charge before the tenant's weight, the part refundable if not produced) of one request.

    By `tokens`: prompt + max_tokens, max_tokens refundable. By `requests`: 1, nothing refundable.
    """
    if unit == "requests":
        return 1, 0
    return need_tokens, max_out


def clock_key(model: str, priority: int) -> str:
    return keys.fair_key(model, priority)


def held_field(scheduler_id: str, tenant: str) -> str:
    return f"h:{scheduler_id}\t{tenant}"


def parse_state(flat: list | dict) -> tuple[float, dict[str, float]]:
    """(V, finish tag per tenant) from HGETALL's answer (a dict, or a flat list from Lua)."""
    if isinstance(flat, list):
        flat = dict(zip(flat[::2], flat[1::2], strict=True))
    vtime, finish = 0.0, {}
    for raw_field, raw_value in flat.items():
        field = raw_field.decode() if isinstance(raw_field, bytes) else raw_field
        if field == "V":
            vtime = float(raw_value)
        elif field.startswith("f:"):
            finish[field[2:]] = float(raw_value)
    return vtime, finish


class Refunder:
    """The worker's side: refund unproduced output when a request ends."""

    def __init__(self, redis: aioredis.Redis):
        self._refund = redis.register_script(_REFUND)

    async def refund(self, request_id: str, tenant: str, model: str, priority: int, produced: int) -> bool:
        done = await self._refund(keys=[keys.request_key(request_id), clock_key(model, priority)],
                                  args=[tenant, produced])
        return done == 1
