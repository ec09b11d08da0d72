-- iudx_write.lua: write.lua's batch (LATEST_BACKEND=redisjson), and for each packet that becomes
-- the latest, its member in the RedisJSON key of its resource group, in the same atomic step: an
-- IUDX reader's JSON.GET <group key> ._<sha1> sees what GET /latest sees.
-- This file is not a script by itself: lua/__init__.py loads write.lua's text up to its driver
-- (its `write` function, unchanged) followed by this file, the driver of this script.
--
-- n packets. KEYS: write.lua's, 4 per packet (KEYS[1..4n]), then per packet i (1-based):
-- KEYS[4n+i] <prefix><group id>  RedisJSON: an object, member _<sha1> → that resource's packet
-- ARGV: write.lua's, 8 per packet (ARGV[1..8n]), then per packet i:
-- ARGV[8n+i] the member's path, ._<sha1 of the resource id, or of its unique attribute>, or ''
--            for none (a packet of another Elasticsearch index than the main one)
-- returns, per packet, write.lua's {applied, seq, epoch, current, existed, entry} and a 7th:
--   '' or the error RedisJSON gave for the member (a document it refuses, such as one nested
--   deeper than it takes): the packet is in history and the latest hash all the same.
local n = #KEYS / 5
local results = {}
local k, a = {}, {}
for i = 0, n - 1 do
  for j = 1, 4 do k[j] = KEYS[4 * i + j] end
  for j = 1, 8 do a[j] = ARGV[8 * i + j] end
  local reply = write(k, a)
  local failed = ''
  local member = ARGV[8 * n + i + 1]
  if reply[1] == 1 and member ~= '' then
    local group = KEYS[4 * n + i + 1]
    -- The first write of a group makes its root, an empty object, as the reference did.
    redis.pcall('JSON.SET', group, '.', '{}', 'NX')
    local set = redis.pcall('JSON.SET', group, member, a[3])
    if type(set) == 'table' and set.err then failed = set.err end
  end
  reply[7] = failed
  results[i + 1] = reply
end
return results
