-- Claim a key once: the first caller wins until the claim expires.
--
-- KEYS[1]  the claim
-- ARGV[1]  the caller's token (unique per claim_once call)
-- ARGV[2]  expiry, epoch ms ("-1": never)
--
-- Returns 1 to the winner, 0 to everyone else. A call the client retried
-- after a timeout (same token) finds its own claim and still wins, so a lost
-- reply cannot lose the claim. PEXPIREAT rather than SET's PXAT: Redis 2.6+.

local held = redis.call('GET', KEYS[1])
if held then
  if held == ARGV[1] then return 1 end
  return 0
end
redis.call('SET', KEYS[1], ARGV[1])
if ARGV[2] ~= '-1' then
  redis.call('PEXPIREAT', KEYS[1], ARGV[2])
end
return 1
