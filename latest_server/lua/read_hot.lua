-- read_hot.lua: the entries of one variable that are still in Redis -- the live stream and every
-- job-owned copy an offload or merge is moving -- inside a time window, in one atomic step, so an
-- entry being renamed is seen in one of the two places.
--
-- KEYS[1] lv:{k}:h     live stream      KEYS[2] lv:{k}:i  live index
-- KEYS[3] lv:{k}:x     set of job ids; job copies are lv:{k}:h:x:<job> and lv:{k}:i:x:<job>
-- ARGV[1] lo ts (inclusive)  ARGV[2] hi ts (exclusive)  ARGV[3] after ts or ""  ARGV[4] after seq
-- ARGV[5] limit per source   ARGV[6] "1" for descending order
-- returns a flat array: seq, ts, doc, sha1 hex, seq, ts, doc, sha1 hex, ... (each source sorted by
-- (ts, seq) in the asked direction; the caller merges sources and removes duplicates)
local lo, hi, after_ts, after_seq = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local limit = tonumber(ARGV[5])
local desc = ARGV[6] == '1'
local out = {}

local function emit(h, members)
  for i = 1, #members do
    local m = members[i]
    local seq = tonumber(string.sub(m, 1, 16))
    local entry = redis.call('XRANGE', h, seq .. '-0', seq .. '-0')[1]
    if entry then
      local fields = entry[2]
      local ts, doc
      for f = 1, #fields, 2 do
        if fields[f] == 't' then ts = fields[f + 1] elseif fields[f] == 'd' then doc = fields[f + 1] end
      end
      out[#out + 1] = seq
      out[#out + 1] = ts
      out[#out + 1] = doc
      out[#out + 1] = string.sub(m, 17)
    end
  end
end

local function collect(h, i)
  local members
  if after_ts == '' then
    if desc then
      members = redis.call('ZREVRANGEBYSCORE', i, '(' .. hi, lo, 'LIMIT', 0, limit)
    else
      members = redis.call('ZRANGEBYSCORE', i, lo, '(' .. hi, 'LIMIT', 0, limit)
    end
    emit(h, members)
    return
  end
  -- entries tied with the cursor's ts come first (they sort by seq), then the rest
  local ties = redis.call('ZRANGEBYSCORE', i, after_ts, after_ts)
  local kept = {}
  if desc then
    for n = #ties, 1, -1 do
      if tonumber(string.sub(ties[n], 1, 16)) < after_seq then kept[#kept + 1] = ties[n] end
    end
    members = redis.call('ZREVRANGEBYSCORE', i, '(' .. after_ts, lo, 'LIMIT', 0, limit)
  else
    for n = 1, #ties do
      if tonumber(string.sub(ties[n], 1, 16)) > after_seq then kept[#kept + 1] = ties[n] end
    end
    members = redis.call('ZRANGEBYSCORE', i, '(' .. after_ts, '(' .. hi, 'LIMIT', 0, limit)
  end
  emit(h, kept)
  emit(h, members)
end

collect(KEYS[1], KEYS[2])
local jobs = redis.call('SMEMBERS', KEYS[3])
for n = 1, #jobs do
  local prefix = string.sub(KEYS[1], 1, -2)  -- "lv:{k}:"
  collect(prefix .. 'h:x:' .. jobs[n], prefix .. 'i:x:' .. jobs[n])
end
return out
