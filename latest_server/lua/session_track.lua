-- session_track.lua: count the new history entries one batch brought to one session, widen its
-- time range, and create the session (state open) if its document has not arrived yet.
--
-- KEYS[1] lv:{sessions}:s:<k>   KEYS[2] lv:{sessions}:v:<k>   KEYS[3] lv:{sessions}:all
-- KEYS[4] lv:{sessions}:active  KEYS[5] lv:{sessions}:ending      (see session_apply.lua)
-- ARGV[1] session id   ARGV[2] new entries (n > 0)   ARGV[3] min ts (µs)   ARGV[4] max ts (µs)
-- ARGV[5] completion delay (ms)   ARGV[6] events channel
-- ARGV[7], ARGV[8], ... pairs of variable id, new entries of that variable
-- returns the session's entry count after the batch
local sid = ARGV[1]
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local now_us = t[1] .. string.format('%06d', tonumber(t[2]))

local state = redis.call('HGET', KEYS[1], 'state')
if not state then
  -- Samples came first (a producer that sends no session document, or one delivered later).
  state = 'open'
  redis.call('HSET', KEYS[1], 'id', sid, 'created', now_us, 'opened', now_us, 'state', 'open',
    'count', 0, 'implicit', 1, 'cc', 0, 'cr', 0, 'cd', ARGV[5])
  redis.call('ZADD', KEYS[3], now_ms, sid)
  redis.call('ZADD', KEYS[4], now_ms + tonumber(ARGV[5]), sid)
end

local count = redis.call('HINCRBY', KEYS[1], 'count', ARGV[2])
for i = 7, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[2], ARGV[i], ARGV[i + 1])
end
local start = redis.call('HGET', KEYS[1], 'start')
if not start or tonumber(ARGV[3]) < tonumber(start) then
  redis.call('HSET', KEYS[1], 'start', ARGV[3])
end
local stop = redis.call('HGET', KEYS[1], 'end')
if not stop or tonumber(ARGV[4]) > tonumber(stop) then
  redis.call('HSET', KEYS[1], 'end', ARGV[4])
end
redis.call('HSET', KEYS[1], 'updated', now_us)
if state ~= 'open' and state ~= 'waiting' then
  -- Data after the end (or after completion): run the end hook again; the merge is idempotent.
  redis.call('ZADD', KEYS[5], 'NX', now_ms, sid)
end

local h = redis.call('HMGET', KEYS[1], 'start', 'end')
redis.call('PUBLISH', ARGV[6], '{"event":"update","id":' .. cjson.encode(sid) .. ',"state":"' ..
  state .. '","previous":"' .. state .. '","count":' .. count .. ',"start":' .. h[1] ..
  ',"end":' .. h[2] .. '}')
return count
