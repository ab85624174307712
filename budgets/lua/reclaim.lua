-- Shared by admit.lua and settle.lua: the loader puts it in front of each script.
-- Release budget reservations whose lease ended (their replica never settled).
local function reclaim_budget(p, now, key)
  local leases, holds = p .. 'bl:' .. key, p .. 'ba:' .. key
  local expired = redis.call('ZRANGEBYSCORE', leases, '-inf', now, 'LIMIT', 0, 256)
  for _, id in ipairs(expired) do
    local amount = redis.call('HGET', holds, id)
    if amount then
      if amount ~= '0' then redis.call('HINCRBY', p .. 'bs:' .. key, 'reserved', '-' .. amount) end
      redis.call('HDEL', holds, id)
    end
  end
  if #expired > 0 then redis.call('ZREM', leases, unpack(expired)) end
end
