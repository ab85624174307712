-- Admit one request: check every limit and budget, then reserve all or none.
--
-- KEYS[1]  reservation record of the request
-- ARGV[1]  key prefix (contains the hash tag, so every key shares one slot)
-- ARGV[2]  JSON {rid, lease, now (-1: server TIME), grace,
--                limits: [[kind, key, limit, amount, window_ms]],
--                budgets: [[key, limit, amount, hard (0/1), expire_at_ms (-1: none),
--                           min_amount ("-1": fixed amount), unit ("t" tokens | "m" money)]]}
-- A budget with a min_amount is flexible: it reserves as much of `amount` as
-- remains, refusing only when less than min_amount remains.
-- Money travels as decimal strings: Lua numbers are doubles and would round
-- amounts above 2^53, so sums are compared with exact base-1e9 limbs instead.
--
-- Returns {0, reason, key, retry_after_ms (-1: none)} when refused, or
-- {1, spent_1, reserved_1, held_1, spent_2, reserved_2, held_2, ...} per budget
-- when allowed (held: what this request holds on that budget).

-- Redis < 7 needs effects replication before TIME may precede writes.
if redis.replicate_commands then redis.replicate_commands() end

local record_key = KEYS[1]
local p = ARGV[1]
local req = cjson.decode(ARGV[2])
local rid = req.rid

local now = req.now
if now < 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function limbs(s)
  local n = #s
  if n <= 9 then return 0, tonumber(s) end
  return tonumber(string.sub(s, 1, n - 9)), tonumber(string.sub(s, n - 8))
end

-- a + b + c <= limit, exactly, for non-negative decimal strings below 2^63.
local function fits(a, b, c, limit)
  local ah, al = limbs(a)
  local bh, bl = limbs(b)
  local ch, cl = limbs(c)
  local lo = al + bl + cl
  local hi = ah + bh + ch + math.floor(lo / 1e9)
  lo = lo % 1e9
  local lh, ll = limbs(limit)
  return hi < lh or (hi == lh and lo <= ll)
end

local function digits(hi, lo)
  if hi > 0 then return string.format('%d%09d', hi, lo) end
  return string.format('%d', lo)
end

-- limit - a - b, exactly; nil when it is negative.
local function room(limit, a, b)
  local lh, ll = limbs(limit)
  local ah, al = limbs(a)
  local bh, bl = limbs(b)
  local lo, hi = ll - al - bl, lh - ah - bh
  while lo < 0 do lo = lo + 1e9; hi = hi - 1 end
  if hi < 0 then return nil end
  return hi, lo
end

-- x < y for decimal strings below 2^63.
local function less(x, y)
  local xh, xl = limbs(x)
  local yh, yl = limbs(y)
  return xh < yh or (xh == yh and xl < yl)
end

local function window_key(kind, key, window)
  local index = math.floor(now / window)
  local tag = (kind == 'requests') and 'r:' or 't:'
  return p .. tag .. string.format('%d', index) .. ':' .. key, (index + 1) * window
end

local function budget_states()
  local out = {1}
  for _, b in ipairs(req.budgets) do
    local s = redis.call('HMGET', p .. 'bs:' .. b[1], 'spent', 'reserved')
    out[#out + 1] = s[1] or '0'
    out[#out + 1] = s[2] or '0'
    out[#out + 1] = redis.call('HGET', p .. 'ba:' .. b[1], rid) or '0'
  end
  return out
end

-- A retried admit of a live reservation must not reserve twice.
if redis.call('EXISTS', record_key) == 1 then return budget_states() end

-- check phase: reads, plus reclaiming expired leases (always correct to do)
for _, l in ipairs(req.limits) do
  local kind, key, limit, amount = l[1], l[2], l[3], l[4]
  if kind == 'concurrency' then
    local slots = p .. 'c:' .. key
    redis.call('ZREMRANGEBYSCORE', slots, '-inf', now)
    if redis.call('ZCARD', slots) + 1 > limit then return {0, kind, key, -1} end
  else
    local wk, window_end = window_key(kind, key, l[5])
    local used = tonumber(redis.call('GET', wk) or '0')
    if used + amount > limit then return {0, kind, key, window_end - now} end
  end
end
local take = {}
for i, b in ipairs(req.budgets) do
  reclaim_budget(p, now, b[1])
  take[i] = b[3]
  if b[4] == 1 then
    local s = redis.call('HMGET', p .. 'bs:' .. b[1], 'spent', 'reserved')
    if not fits(s[1] or '0', s[2] or '0', b[3], b[2]) then
      local hi, lo = room(b[2], s[1] or '0', s[2] or '0')
      local minimum = b[6]
      if minimum == '-1' or hi == nil or less(digits(hi, lo), minimum) then return {0, 'budget', b[1], -1} end
      take[i] = digits(hi, lo)
    end
  end
end

-- reserve phase: every check passed
local expiry = now + req.lease
local record = {c = {}, t = {}, b = {}}
for _, l in ipairs(req.limits) do
  local kind, key, amount = l[1], l[2], l[4]
  if kind == 'concurrency' then
    local slots = p .. 'c:' .. key
    redis.call('ZADD', slots, expiry, rid)
    local last = redis.call('ZRANGE', slots, -1, -1, 'WITHSCORES')
    redis.call('PEXPIRE', slots, tonumber(last[2]) - now + 1000)
    record.c[#record.c + 1] = key
  else
    local wk, window_end = window_key(kind, key, l[5])
    redis.call('INCRBY', wk, amount)
    -- Kept a little past the window so a settle inside it can still correct.
    redis.call('PEXPIRE', wk, window_end - now + 1000)
    if kind == 'tokens' then record.t[#record.t + 1] = {key, wk, amount} end
  end
end
for i, b in ipairs(req.budgets) do
  local key, amount, expire_at, unit = b[1], take[i], b[5], b[7]
  local state, holds, leases = p .. 'bs:' .. key, p .. 'ba:' .. key, p .. 'bl:' .. key
  redis.call('HINCRBY', state, 'reserved', amount)
  redis.call('HSET', holds, rid, amount)
  redis.call('ZADD', leases, expiry, rid)
  if expire_at > 0 then
    redis.call('PEXPIREAT', state, expire_at)
    redis.call('PEXPIREAT', holds, expire_at)
    redis.call('PEXPIREAT', leases, expire_at)
  end
  record.b[#record.b + 1] = {key, expire_at, unit}
end
redis.call('SET', record_key, cjson.encode(record), 'PX', req.lease + req.grace)
return budget_states()
