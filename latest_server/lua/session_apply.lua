-- session_apply.lua: apply one session document: a state change and/or an update of the session's
-- time range and info, checked against the allowed transitions, in one atomic step.
--
-- KEYS[1] lv:{sessions}:s:<k>   hash (fields in keys.session)
-- KEYS[2] lv:{sessions}:v:<k>   hash variable id -> entries (not touched here; same KEYS as track)
-- KEYS[3] lv:{sessions}:all     sorted set: session id, score = creation (ms)
-- KEYS[4] lv:{sessions}:active  sorted set: open sessions, score = next completion poll (ms)
-- KEYS[5] lv:{sessions}:ending  sorted set: sessions whose end hook is due, score = due (ms)
-- ARGV[1] session id   ARGV[2] state ('' = unchanged; 'open' for a session seen first)
-- ARGV[3] start (µs, '' = none)   ARGV[4] end (µs, '' = none)   ARGV[5] info JSON ('' = none)
-- ARGV[6] error text ('' = none)   ARGV[7] completion delay (ms)   ARGV[8] events channel
-- returns {outcome, previous state ('' when the session is new)}
--   outcome 'applied': the state changed (or the session is new); 'updated': same state, the
--   range/info were merged; 'rejected': the transition is not allowed, nothing was written.
local allowed = {
  waiting = {waiting = true, open = true, closed = true, truncated = true, failed = true},
  open = {open = true, closed = true, truncated = true, failed = true},
  complete = {closed = true, truncated = true, failed = true},
  closed = {closed = true},
  truncated = {truncated = true},
  failed = {failed = true},
}
local ends = {closed = true, truncated = true, failed = true}

local sid = ARGV[1]
local previous = redis.call('HGET', KEYS[1], 'state')
local state = ARGV[2]
if state == '' then state = previous or 'open' end
if previous and not allowed[previous][state] then
  return {'rejected', previous}
end

local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local now_us = t[1] .. string.format('%06d', tonumber(t[2]))

if not previous then
  redis.call('HSET', KEYS[1], 'id', sid, 'created', now_us, 'count', 0)
  redis.call('ZADD', KEYS[3], now_ms, sid)
end
if ARGV[3] ~= '' then
  local current = redis.call('HGET', KEYS[1], 'start')
  if not current or tonumber(ARGV[3]) < tonumber(current) then
    redis.call('HSET', KEYS[1], 'start', ARGV[3])
  end
end
if ARGV[4] ~= '' then
  local current = redis.call('HGET', KEYS[1], 'end')
  if not current or tonumber(ARGV[4]) > tonumber(current) then
    redis.call('HSET', KEYS[1], 'end', ARGV[4])
  end
end
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'info', ARGV[5]) end
if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[6]) end
redis.call('HSET', KEYS[1], 'updated', now_us)

local function event(kind)
  local h = redis.call('HMGET', KEYS[1], 'count', 'start', 'end')
  return '{"event":"' .. kind .. '","id":' .. cjson.encode(sid) .. ',"state":"' .. state ..
    '","previous":' .. (previous and ('"' .. previous .. '"') or 'null') ..
    ',"count":' .. (h[1] or '0') .. ',"start":' .. (h[2] or 'null') ..
    ',"end":' .. (h[3] or 'null') .. '}'
end

if state == previous then
  redis.call('PUBLISH', ARGV[8], event('update'))
  return {'updated', previous}
end

redis.call('HSET', KEYS[1], 'state', state)
if state == 'open' then
  local count = redis.call('HGET', KEYS[1], 'count') or '0'
  redis.call('HSET', KEYS[1], 'opened', now_us, 'cc', count, 'cr', 0, 'cd', ARGV[7])
  redis.call('ZADD', KEYS[4], now_ms + tonumber(ARGV[7]), sid)
elseif ends[state] then
  redis.call('HSET', KEYS[1], 'ended', now_us)
  redis.call('ZREM', KEYS[4], sid)
  redis.call('ZADD', KEYS[5], now_ms, sid)
end
redis.call('PUBLISH', ARGV[8], event('state'))
return {'applied', previous or ''}
