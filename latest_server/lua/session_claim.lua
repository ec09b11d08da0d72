-- session_claim.lua: claim a session whose end hook is due, for a lease. The claimed member's
-- score becomes the lease expiry, which is also the claim's token: a holder that dies is
-- replaced once the lease expires; only the current holder may release.
--
-- KEYS[1] lv:{sessions}:ending   ARGV[1] session id   ARGV[2] lease (ms)
-- returns the token (the new score, a string), or false when not due (claimed by another)
local due = redis.call('ZSCORE', KEYS[1], ARGV[1])
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if not due or tonumber(due) > now_ms then return false end
redis.call('ZADD', KEYS[1], 'XX', now_ms + tonumber(ARGV[2]), ARGV[1])
return redis.call('ZSCORE', KEYS[1], ARGV[1])
