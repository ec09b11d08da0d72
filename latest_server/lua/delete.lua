-- delete.lua: delete the latest document of one variable, leaving a tombstone: the hash keeps only
-- v (the deleted version), so a later write must still be newer than it (Elasticsearch's
-- versioned deletes; the tombstone is kept until the next write replaces it, not only 60 s).
-- History is untouched: a delete is not a packet.
--
-- KEYS[1] lv:{k}:latest  hash: v (version), doc, id, s, ev
-- ARGV[1] the version of the delete ('' for none: the tombstone takes current + 1)
-- ARGV[2] "1" for external_gte (>=), "0" for external (>)
-- returns {result, version, current}
--   result 'deleted', 'not_found' (no document; a given version still leaves a tombstone) or
--   'conflict' (the given version is not newer than the current one); version the tombstone's;
--   current the version before ('' if none).
local state = redis.call('HMGET', KEYS[1], 'v', 'id')
local current = state[1]
local cn = current and tonumber(current)
local version = ARGV[1]
if version == '' then
  if not state[2] then
    return {'not_found', current or '0', current or ''}
  end
  version = string.format('%.0f', cn + 1)
  if cn + 1 >= 2 ^ 53 then version = current end
else
  local vn = tonumber(version)
  if cn and not (vn > cn or (ARGV[2] == '1' and vn == cn)) then
    return {'conflict', current, current}
  end
end
redis.call('HDEL', KEYS[1], 'doc', 'id', 's', 'ev')
redis.call('HSET', KEYS[1], 'v', version)
if state[2] then
  return {'deleted', version, current or ''}
end
return {'not_found', version, current or ''}
