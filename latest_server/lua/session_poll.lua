-- session_poll.lua: one step of the completion detector for one open session. Only a caller that
-- finds the session due (score <= now) acts, and it moves the due time first: however many
-- processes poll, each step happens once, and the state lives in Redis (it survives restarts).
--
-- KEYS[1] lv:{sessions}:s:<k>   KEYS[2] lv:{sessions}:v:<k>   KEYS[3] lv:{sessions}:all
-- KEYS[4] lv:{sessions}:active  KEYS[5] lv:{sessions}:ending      (see session_apply.lua)
-- ARGV[1] session id   ARGV[2] repeats (unchanged polls that declare completion)
-- ARGV[3] initial delay (ms)   ARGV[4] shrink factor of the delay per unchanged poll (0 < f <= 1)
-- ARGV[5] events channel
-- returns 0 not due (or no longer open), 1 polled (still watched), 2 declared complete
local sid = ARGV[1]
local due = redis.call('ZSCORE', KEYS[4], sid)
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local now_us = t[1] .. string.format('%06d', tonumber(t[2]))
if not due or tonumber(due) > now_ms then return 0 end

local h = redis.call('HMGET', KEYS[1], 'state', 'count', 'cc', 'cr', 'cd')
if h[1] ~= 'open' then
  redis.call('ZREM', KEYS[4], sid)
  return 0
end
local count = h[2] or '0'
if count ~= h[3] then
  -- Data arrived since the last poll: start over with the full delay.
  redis.call('HSET', KEYS[1], 'cc', count, 'cr', 0, 'cd', ARGV[3])
  redis.call('ZADD', KEYS[4], now_ms + tonumber(ARGV[3]), sid)
  return 1
end
local repeats = tonumber(h[4] or '0') + 1
if repeats >= tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 'state', 'complete', 'completed', now_us, 'updated', now_us,
    'cr', repeats)
  redis.call('ZREM', KEYS[4], sid)
  redis.call('ZADD', KEYS[5], now_ms, sid)
  local r = redis.call('HMGET', KEYS[1], 'start', 'end')
  redis.call('PUBLISH', ARGV[5], '{"event":"complete","id":' .. cjson.encode(sid) ..
    ',"state":"complete","previous":"open","count":' .. count .. ',"start":' ..
    (r[1] or 'null') .. ',"end":' .. (r[2] or 'null') .. '}')
  return 2
end
local delay = math.max(1, math.floor(tonumber(h[5] or ARGV[3]) * tonumber(ARGV[4])))
redis.call('HSET', KEYS[1], 'cr', repeats, 'cd', delay)
redis.call('ZADD', KEYS[4], now_ms + delay, sid)
return 1
