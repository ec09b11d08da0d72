-- append.lua: one packet's history entry and feed message, without the latest document (the
-- Elasticsearch latest backend keeps that in an Elasticsearch index). The history half of
-- write.lua, in one atomic step.
--
-- KEYS[1] lv:{k}:h       stream: entry id <seq>-0, fields t (ts µs), d (doc)
-- KEYS[2] lv:{k}:i       sorted set: score ts, member <seq as 16 digits><digest hex>
-- KEYS[3] lv:{k}:meta    hash: e (epoch), s (last seq), b (base), id (the variable id)
-- ARGV[1] ts (µs, integer)   ARGV[2] doc (JSON)   ARGV[3] digest hex of doc (canonical.digest)
-- ARGV[4] feed channel lv:{k}:feed   ARGV[5] variable id (kept in meta with a new epoch)
-- returns {seq, epoch}: seq 0 when the same (ts, doc) is already in the hot history.
local ts = ARGV[1]
local digest = ARGV[3]

local same_ts = redis.call('ZRANGEBYSCORE', KEYS[2], ts, ts)
for i = 1, #same_ts do
  if string.sub(same_ts[i], 17) == digest then
    return {0, redis.call('HGET', KEYS[3], 'e') or '0'}
  end
end

local epoch = redis.call('HGET', KEYS[3], 'e')
if not epoch then
  local now = redis.call('TIME')
  epoch = now[1] .. string.format('%06d', tonumber(now[2]))
  local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
  local s = 0
  if last[1] then s = tonumber(string.match(last[1][1], '^(%d+)')) end
  redis.call('HSET', KEYS[3], 'e', epoch, 's', s, 'b', s, 'id', ARGV[5])
end
local seq = redis.call('HINCRBY', KEYS[3], 's', '1')
local sq = string.format('%d', seq)  -- as write.lua: once, and as an integer
redis.call('XADD', KEYS[1], sq .. '-0', 't', ts, 'd', ARGV[2])
redis.call('ZADD', KEYS[2], ts, string.rep('0', 16 - #sq) .. sq .. digest)
redis.call('SPUBLISH', ARGV[4], epoch .. ' ' .. sq .. ' ' .. ts .. ' ' .. ARGV[2])
return {seq, epoch}
