-- Settle one request: release what it reserved and charge its actual usage.
--
-- KEYS[1]  reservation record of the request (written by admit.lua)
-- ARGV[1]  key prefix (contains the hash tag, so every key shares one slot)
-- ARGV[2]  request id
-- ARGV[3]  JSON {t: "actual tokens", m: "actual money"}: token windows are
--          corrected to t, token budgets charged t and money budgets m.
-- Amounts are decimal strings and only ever reach Redis as strings, so
-- HINCRBY keeps them exact; Lua never does arithmetic on money.
--
-- The record is deleted first, which makes a second settle of the same id (or
-- a settle of an unknown or long-expired id) a no-op. Returns 1 when settled.

if redis.replicate_commands then redis.replicate_commands() end

local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
redis.call('DEL', KEYS[1])

local p = ARGV[1]
local rid = ARGV[2]
local record = cjson.decode(raw)
local actual = cjson.decode(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

for _, key in ipairs(record.c) do
  local slots = p .. 'c:' .. key
  redis.call('ZREMRANGEBYSCORE', slots, '-inf', now)
  redis.call('ZREM', slots, rid)
end

for _, entry in ipairs(record.t) do
  local wk, estimate = entry[2], entry[3]
  local delta = tonumber(actual.t) - estimate
  -- Only the window the estimate went into is corrected; once it has ended
  -- its key is gone and the correction no longer matters.
  if delta ~= 0 and redis.call('EXISTS', wk) == 1 then redis.call('INCRBY', wk, delta) end
end

for _, entry in ipairs(record.b) do
  local key, expire_at, unit = entry[1], entry[2], entry[3]
  local state, holds = p .. 'bs:' .. key, p .. 'ba:' .. key
  reclaim_budget(p, now, key)
  local held = redis.call('HGET', holds, rid)
  if held then
    redis.call('HDEL', holds, rid)
    redis.call('ZREM', p .. 'bl:' .. key, rid)
    if held ~= '0' then redis.call('HINCRBY', state, 'reserved', '-' .. held) end
  end
  local charge = (unit == 't') and actual.t or actual.m
  if charge ~= '0' then
    redis.call('HINCRBY', state, 'spent', charge)
    if expire_at > 0 then redis.call('PEXPIREAT', state, expire_at) end
  end
end
return 1
