-- session_release.lua: the holder of a claim (session_claim.lua) is done, or wants a retry.
--
-- KEYS[1] lv:{sessions}:ending   KEYS[2] lv:{sessions}:s:<k>
-- ARGV[1] session id   ARGV[2] token   ARGV[3] retry in (ms; '' = done, remove it)
-- ARGV[4] error text when the hook failed ('' = none)
-- returns 1 released, 0 the claim was lost (the lease expired and someone else holds it)
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score ~= ARGV[2] then return 0 end
if ARGV[3] == '' then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], 'end_error')
  redis.call('HINCRBY', KEYS[2], 'end_runs', 1)
else
  local t = redis.call('TIME')
  local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('ZADD', KEYS[1], 'XX', now_ms + tonumber(ARGV[3]), ARGV[1])
  redis.call('HSET', KEYS[2], 'end_error', ARGV[4])
  redis.call('HINCRBY', KEYS[2], 'end_failures', 1)
end
return 1
