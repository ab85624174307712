-- Settle one request on one shard: release what it reserved there and charge
-- its actual usage (or, undoing, release everything and count nothing).
--
-- KEYS[1]  the request's reservation record on this shard (written by admit.lua)
-- ARGV     prefix (with the shard's hash tag), request id, actual tokens,
--          actual money, undo (1: a refusal elsewhere withdraws this part, so
--          its requests are uncounted too and nothing is charged)
-- Token windows are corrected to the actual tokens, token budgets charged the
-- tokens and money budgets the money. Amounts are decimal strings and only
-- ever reach Redis as strings, so HINCRBY keeps them exact.
--
-- The record is deleted first, which makes a second settle of the same id (or
-- a settle of an unknown or long-expired id) a no-op. Returns 1 when settled.

local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
redis.call('DEL', KEYS[1])

local p, rid = ARGV[1], ARGV[2]
local undo = ARGV[5] == '1'

-- A JSON record was written by the previous version (holds in ba: and bl:), during a rolling upgrade.
if string.sub(raw, 1, 1) == '{' then
  local record = cjson.decode(raw)
  for _, key in ipairs(record.c) do redis.call('ZREM', p .. 'c:' .. key, rid) end
  for _, entry in ipairs(record.t) do
    local delta = tonumber(ARGV[3]) - entry[3]
    if delta ~= 0 and redis.call('EXISTS', entry[2]) == 1 then redis.call('INCRBY', entry[2], delta) end
  end
  for _, entry in ipairs(record.b) do
    local state, holds = p .. 'bs:' .. entry[1], p .. 'ba:' .. entry[1]
    local held = redis.call('HGET', holds, rid)
    if held then
      redis.call('HDEL', holds, rid)
      redis.call('ZREM', p .. 'bl:' .. entry[1], rid)
      if held ~= '0' then redis.call('HINCRBY', state, 'reserved', '-' .. held) end
    end
    local charge = (entry[3] == 't') and ARGV[3] or ARGV[4]
    if charge ~= '0' then
      redis.call('HINCRBY', state, 'spent', charge)
      if entry[2] > 0 then redis.call('PEXPIREAT', state, entry[2]) end
    end
  end
  return 1
end

local conc, requests, tokens, budgets = cmsgpack.unpack(raw)

for _, slots in ipairs(conc) do redis.call('ZREM', slots, rid) end

-- Only the windows the request went into are corrected; once one has ended
-- its key is gone and the correction no longer matters.
if undo then
  for _, wk in ipairs(requests) do
    if redis.call('EXISTS', wk) == 1 then redis.call('DECRBY', wk, 1) end
  end
end
local actual = undo and 0 or tonumber(ARGV[3])
for i = 1, #tokens, 2 do
  local wk, delta = tokens[i], actual - tokens[i + 1]
  if delta ~= 0 and redis.call('EXISTS', wk) == 1 then redis.call('INCRBY', wk, delta) end
end

for i = 1, #budgets, 3 do
  local key, tail, held = budgets[i], budgets[i + 1], budgets[i + 2]
  local state = p .. 'bs:' .. key
  -- Gone from the holds: the lease ended and admit.lua already released it.
  if redis.call('ZREM', p .. 'bh:' .. key, rid .. ' ' .. held) == 1 and held ~= '0' then
    redis.call('HINCRBY', state, 'reserved', '-' .. held)
  end
  local unit, expire_at = string.sub(tail, -1), tonumber(string.sub(tail, 1, -2))
  local charge = undo and '0' or ((unit == 't') and ARGV[3] or ARGV[4])
  if charge ~= '0' then
    local spent = redis.call('HINCRBY', state, 'spent', charge)
    -- A counter this charge created (its period's had expired) expires as the budget says.
    if expire_at > 0 and spent == tonumber(charge) then redis.call('PEXPIREAT', state, expire_at) end
  end
end
return 1
