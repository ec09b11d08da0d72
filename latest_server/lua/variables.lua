#!lua flags=no-writes
-- variables.lua: what GET /variables shows of a page of variables, in one call (a pipeline of
-- two commands per variable costs the client more than Redis answering them). Reads only.
--
-- Per variable i (KEYS in strides of 2):
-- KEYS[2i-1] lv:{k}:meta    hash: s (the last seq)
-- KEYS[2i]   lv:{k}:latest  hash: v (version), id (absent from a tombstone)
-- ARGV none
-- returns a flat array, per variable: the last seq ('' for none) and the latest version (''
-- when there is no document: none, or a tombstone left by a delete)
local out = {}
for i = 1, #KEYS, 2 do
  local seq = redis.call('HGET', KEYS[i], 's')
  local state = redis.call('HMGET', KEYS[i + 1], 'v', 'id')
  out[#out + 1] = seq or ''
  if state[2] then out[#out + 1] = state[1] else out[#out + 1] = '' end
end
return out
