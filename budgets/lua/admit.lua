-- Admit one request on one shard: check every limit and budget given, then
-- reserve all or none. Every key shares the shard's hash tag (one slot).
--
-- KEYS[1]  the request's reservation record on this shard
-- ARGV     prefix (with the shard's hash tag), request id, now ms (-1: server
--          TIME), lease ms, record grace ms, number of limits, then per limit
--          kind (r | t | c), key, limit, amount, window ms; then number of
--          budgets, and per budget key, limit, amount, hard (0 | 1),
--          expire_at ms (-1: none), floor (-1: fixed amount), unit (t | m).
-- A budget with a floor is flexible: it reserves as much of `amount` as
-- remains, refusing only when less than the floor remains. Budget amounts are
-- decimal strings: Lua numbers are doubles and would round amounts above
-- 2^53, so sums are worked out with exact base-1e9 limbs.
--
-- Returns {0, reason, key, retry_after_ms (-1: none)} when refused, or
-- {1, spent_1, reserved_1, held_1, spent_2, ...} per budget when allowed.
--
-- Keys: r:<window>:<key> and t:<window>:<key> request and token windows (kept
-- a second past their window), c:<key> concurrency slots (ZSET id -> lease
-- end), bs:<key> budget state (HASH spent, reserved), bh:<key> budget holds
-- (ZSET "<id> <amount>" -> lease end). A key gets its TTL when it is created,
-- not on every write.

-- Redis < 7 needs effects replication before TIME may precede writes.
if redis.replicate_commands then redis.replicate_commands() end

local record_key = KEYS[1]
local p, rid = ARGV[1], ARGV[2]
local now = tonumber(ARGV[3])
if now < 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local lease, grace = tonumber(ARGV[4]), tonumber(ARGV[5])
local nl = tonumber(ARGV[6])
local nb_at = 7 + 5 * nl
local nb = tonumber(ARGV[nb_at])

local function limbs(s)
  local n = #s
  if n <= 9 then return 0, tonumber(s) end
  return tonumber(string.sub(s, 1, n - 9)), tonumber(string.sub(s, n - 8))
end

local function digits(hi, lo)
  if hi > 0 then return string.format('%d%09d', hi, lo) end
  return string.format('%d', lo)
end

-- a + b, exactly, for non-negative decimal strings below 2^63.
local function add(a, b)
  local ah, al = limbs(a)
  local bh, bl = limbs(b)
  local lo = al + bl
  return digits(ah + bh + math.floor(lo / 1e9), lo % 1e9)
end

-- limit - a - b, exactly; nil when it is negative.
local function room(limit, a, b)
  local lh, ll = limbs(limit)
  local ah, al = limbs(a)
  local bh, bl = limbs(b)
  local lo, hi = ll - al - bl, lh - ah - bh
  while lo < 0 do lo = lo + 1e9; hi = hi - 1 end
  if hi < 0 then return nil end
  return digits(hi, lo)
end

-- x < y for decimal strings below 2^63.
local function less(x, y)
  if #x ~= #y then return #x < #y end
  return x < y
end

-- A retried admit of a live reservation reserves nothing more.
local raw = redis.call('GET', record_key)
if raw then
  local _, _, _, b = cmsgpack.unpack(raw)
  local out = {1}
  for i = 1, #b, 3 do
    local s = redis.call('HMGET', p .. 'bs:' .. b[i], 'spent', 'reserved')
    out[#out + 1] = s[1] or '0'
    out[#out + 1] = s[2] or '0'
    out[#out + 1] = b[i + 2]
  end
  return out
end

-- check phase: reads, plus reclaiming expired leases (always correct to do)
local seen = {}
for i = 0, nl - 1 do
  local at = 7 + 5 * i
  local kind, key, limit, amount = ARGV[at], ARGV[at + 1], tonumber(ARGV[at + 2]), tonumber(ARGV[at + 3])
  if kind == 'c' then
    local slots = p .. 'c:' .. key
    redis.call('ZREMRANGEBYSCORE', slots, '-inf', now)
    local held = redis.call('ZCARD', slots)
    if held + 1 > limit then return {0, 'concurrency', key, -1} end
    seen[i] = held
  else
    local window = tonumber(ARGV[at + 4])
    local index = math.floor(now / window)
    local wk = p .. kind .. ':' .. string.format('%d', index) .. ':' .. key
    local used = redis.call('GET', wk)
    local window_end = (index + 1) * window
    if (used and tonumber(used) or 0) + amount > limit then
      return {0, (kind == 'r') and 'requests' or 'tokens', key, window_end - now}
    end
    seen[i] = {wk, used, window_end}
  end
end
local states, take = {}, {}
for i = 0, nb - 1 do
  local at = nb_at + 1 + 7 * i
  local key, limit, amount, hard, floor = ARGV[at], ARGV[at + 1], ARGV[at + 2], ARGV[at + 3], ARGV[at + 5]
  local holds, state = p .. 'bh:' .. key, p .. 'bs:' .. key
  local expired = redis.call('ZRANGEBYSCORE', holds, '-inf', now, 'LIMIT', 0, 256)
  for _, member in ipairs(expired) do
    local held = string.match(member, ' (%d+)$')
    if held and held ~= '0' then redis.call('HINCRBY', state, 'reserved', '-' .. held) end
  end
  if #expired > 0 then redis.call('ZREM', holds, unpack(expired)) end
  local s = redis.call('HMGET', state, 'spent', 'reserved')
  local spent, reserved = s[1] or '0', s[2] or '0'
  states[i] = {spent, reserved, s[1] == false and s[2] == false}
  take[i] = amount
  if hard == '1' then
    local left = room(limit, spent, reserved)
    if left == nil or less(left, amount) then
      if floor == '-1' or left == nil or less(left, floor) then return {0, 'budget', key, -1} end
      take[i] = left
    end
  end
end

-- reserve phase: every check passed
local expiry = now + lease
local conc, requests, tokens, budgets = {}, {}, {}, {}
for i = 0, nl - 1 do
  local at = 7 + 5 * i
  local kind, key = ARGV[at], ARGV[at + 1]
  if kind == 'c' then
    local slots = p .. 'c:' .. key
    redis.call('ZADD', slots, expiry, rid)
    -- The set outlives its latest lease; extended with slack so that most admits skip it.
    if seen[i] == 0 or redis.call('PTTL', slots) < lease + 1000 then
      redis.call('PEXPIRE', slots, 2 * lease + 1000)
    end
    conc[#conc + 1] = slots
  else
    local wk, used, window_end = seen[i][1], seen[i][2], seen[i][3]
    local amount = tonumber(ARGV[at + 3])
    redis.call('INCRBY', wk, amount)
    -- Kept a little past the window so a settle inside it can still correct.
    if not used then redis.call('PEXPIRE', wk, window_end - now + 1000) end
    if kind == 'r' then
      requests[#requests + 1] = wk
    else
      tokens[#tokens + 1] = wk
      tokens[#tokens + 1] = amount
    end
  end
end
local out = {1}
for i = 0, nb - 1 do
  local at = nb_at + 1 + 7 * i
  local key, expire_at, unit = ARGV[at], ARGV[at + 4], ARGV[at + 6]
  local state, holds, held = p .. 'bs:' .. key, p .. 'bh:' .. key, take[i]
  redis.call('HINCRBY', state, 'reserved', held)
  redis.call('ZADD', holds, expiry, rid .. ' ' .. held)
  if expire_at ~= '-1' then
    if states[i][3] then redis.call('PEXPIREAT', state, expire_at) end
    redis.call('PEXPIREAT', holds, expire_at)
  end
  budgets[#budgets + 1] = key
  budgets[#budgets + 1] = expire_at .. unit
  budgets[#budgets + 1] = held
  out[#out + 1] = states[i][1]
  out[#out + 1] = add(states[i][2], held)
  out[#out + 1] = held
end
redis.call('SET', record_key, cmsgpack.pack(conc, requests, tokens, budgets), 'PX', lease + grace)
return out
