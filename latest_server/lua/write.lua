#!lua flags=allow-cross-slot-keys
-- write.lua: a batch of packets. For each: append it to history, compare-and-set the latest
-- document, publish the entry on the live feed -- one atomic step, so no reader sees one without
-- the others. One call carries many packets (KEYS and ARGV in fixed strides), so a batch costs
-- one command instead of one per packet.
--
-- Per packet i (KEYS from 4*(i-1)+1, ARGV from 8*(i-1)+1):
-- KEYS[1] lv:{k}:latest  hash: v (version = ts µs), doc, id, s (seq of its history entry),
--                         ev (the version as an Elasticsearch request gave it, or '')
-- KEYS[2] lv:{k}:h       stream: entry id <seq>-0, fields t (ts µs), d (doc)
-- KEYS[3] lv:{k}:i       sorted set: score ts, member <seq as 16 digits><digest hex>
--                         (dedup + time index; ties sort by seq; digest: canonical.digest)
-- KEYS[4] lv:{k}:meta    hash: e (epoch), s (last seq), b (the last seq before the epoch began),
--                         id (the variable id, set with the epoch: the index's reindex reads it)
-- ARGV[1] variable id   ARGV[2] ts (µs, integer)   ARGV[3] doc (JSON)   ARGV[4] digest hex of doc
-- ARGV[5] "1" for external_gte (>=), "0" for external (>), "c" for create (only when no
--         document is there)   ARGV[6] feed channel lv:{k}:feed
-- ARGV[7] the version when it is not the ts (an Elasticsearch request's `version`, on the
--         scale every path compares), else ""   ARGV[8] that version as the request gave it
--         when it differs (epoch ms, say), else ""
-- returns, per packet, {applied, seq, epoch, current, existed, entry}
--   applied 1 when the document became the latest, 0 when it was stale (or a redelivery);
--   seq 0 when the same (ts, digest) is already in the hot history (a redelivery: no history
--   entry is written; it becomes the latest only when its version is now newer than the
--   latest's, as when its first copy came with an older Elasticsearch `version`);
--   current the version before this write ('' if none); existed 1 if a document was there (a
--   deleted document leaves a tombstone: the hash keeps only v); entry the seq of the history
--   entry holding this packet (the earlier one for a redelivery, 0 if unknown).
local function write(K, A)
  local ts = A[2]
  local explicit = A[7] ~= ''
  local version = ts
  if explicit then version = A[7] end
  local vn = tonumber(version)
  local digest = A[4]
  local state = redis.call('HMGET', K[1], 'v', 'id')
  local current = state[1]
  local existed = 0
  if state[2] then existed = 1 end
  local cn = current and tonumber(current)

  -- (ts, digest) already in history? Only entries with exactly this ts need a look. A packet
  -- found there is not appended again, but it still takes part in the compare-and-set: its
  -- first copy may have been refused (an Elasticsearch write with an older `version`), and
  -- this one may be owed the latest document.
  local entry = nil
  local same_ts = redis.call('ZRANGEBYSCORE', K[3], ts, ts)
  for i = 1, #same_ts do
    if string.sub(same_ts[i], 17) == digest then
      entry = tonumber(string.sub(same_ts[i], 1, 16))
      break
    end
  end
  if entry and not explicit and cn and vn <= cn then
    -- A copy of it had its compare-and-set at this version already (a redelivery), and the
    -- latest version has not gone below it since: not newer, it is owed nothing, even in
    -- external_gte, where it must not undo a tie that a later packet won.
    local e = redis.call('HGET', K[4], 'e')
    return {0, 0, e or '0', current or '', existed, entry}
  end

  local seq, sq = 0, nil
  local epoch
  if entry then
    epoch = redis.call('HGET', K[4], 'e') or '0'
  else
    epoch = redis.call('HGET', K[4], 'e')
    if not epoch then
      -- A new epoch: the counter is gone. Continue after the hot history's last seq, if any,
      -- so stream ids stay increasing; clients holding the old epoch are told to reset.
      local now = redis.call('TIME')
      epoch = now[1] .. string.format('%06d', tonumber(now[2]))
      local last = redis.call('XREVRANGE', K[2], '+', '-', 'COUNT', 1)
      local s = 0
      if last[1] then s = tonumber(string.match(last[1][1], '^(%d+)')) end
      redis.call('HSET', K[4], 'e', epoch, 's', s, 'b', s, 'id', A[1])
    end
    -- Numbers become text through Lua's float format (sprintf "%.14g"), about as costly as
    -- the command: the increment is given as text, and the seq made into text once, with '%d'.
    seq = redis.call('HINCRBY', K[4], 's', '1')
    sq = string.format('%d', seq)
    redis.call('XADD', K[2], sq .. '-0', 't', ts, 'd', A[3])
    redis.call('ZADD', K[3], ts, string.rep('0', 16 - #sq) .. sq .. digest)
    entry = seq
  end

  local applied = 0
  if A[5] == 'c' then
    if existed == 0 then applied = 1 end
  elseif not cn or vn > cn or (A[5] == '1' and vn == cn) then
    applied = 1
  end
  if applied == 1 then
    if existed == 1 then  -- the id is there already (it is the one the key was made from)
      redis.call('HSET', K[1], 'v', version, 'doc', A[3], 's', sq or entry, 'ev', A[8])
    else
      redis.call('HSET', K[1], 'v', version, 'doc', A[3], 'id', A[1], 's', sq or entry, 'ev', A[8])
    end
  end

  if seq > 0 then
    redis.call('SPUBLISH', A[6], epoch .. ' ' .. sq .. ' ' .. ts .. ' ' .. A[3])
  end
  return {applied, seq, epoch, current or '', existed, entry}
end

-- driver: each packet's KEYS and ARGV, in their strides (lua/iudx_write.lua reuses what is above)
-- In a Redis Cluster one call carries the packets of many slots of one node, which Redis allows
-- only for keys it was not told of (the allow-cross-slot-keys flag): numkeys is 0 and the
-- packets' KEYS follow all their ARGV. A packet of a slot the node no longer serves (the
-- caller's slot map is out of date), or one met while the cluster is down (a failover), fails at
-- its first command, before it writes anything: its reply is the error's text, the call goes
-- on, and the caller sends it again (to the right node). A variable's packets share a slot, so
-- either all of them in a call are written, or none.
local names, base, n = KEYS, 0, #KEYS / 4
local undeclared = n == 0
if undeclared then names, n = ARGV, #ARGV / 12; base = 8 * n end
local results = {}
local k, a = {}, {}
for i = 0, n - 1 do
  for j = 1, 4 do k[j] = names[base + 4 * i + j] end
  for j = 1, 8 do a[j] = ARGV[8 * i + j] end
  if undeclared then
    local ok, result = pcall(write, k, a)
    if not ok then
      local text = type(result) == 'table' and result.err or tostring(result)
      if not (string.find(text, 'non local key', 1, true)
              or string.find(text, 'cluster is down', 1, true)) then error(result) end
      result = text
    end
    results[i + 1] = result
  else
    results[i + 1] = write(k, a)
  end
end
return results
