-- read_seq.lua: the entries of one variable with a < seq <= b that are still in Redis -- the live
-- stream and every job-owned copy an offload or merge is moving -- and the variable's position,
-- in one atomic step, so an entry being renamed is seen in one of the two places.
--
-- KEYS[1] lv:{k}:h     live stream      KEYS[2] lv:{k}:x   set of job ids (copies lv:{k}:h:x:<job>)
-- KEYS[3] lv:{k}:meta  e (epoch), s (last seq), b (base seq of the epoch)
-- ARGV[1] a (exclusive)  ARGV[2] b (inclusive)  ARGV[3] most entries per source
-- returns {epoch or false, last seq or false, base or false, {seq, ts, doc, seq, ts, doc, ...}}
-- (each source in seq order; the caller merges sources and removes duplicates by seq)
local first, last, count = tonumber(ARGV[1]) + 1, tonumber(ARGV[2]), tonumber(ARGV[3])
local out = {}

local function grab(h)
  if first > last then return end
  local rows = redis.call('XRANGE', h, first .. '-0', last .. '-0', 'COUNT', count)
  for i = 1, #rows do
    local fields = rows[i][2]
    local ts, doc
    for f = 1, #fields, 2 do
      if fields[f] == 't' then ts = fields[f + 1] elseif fields[f] == 'd' then doc = fields[f + 1] end
    end
    out[#out + 1] = string.match(rows[i][1], '^(%d+)')
    out[#out + 1] = ts
    out[#out + 1] = doc
  end
end

grab(KEYS[1])
local jobs = redis.call('SMEMBERS', KEYS[2])
local prefix = string.sub(KEYS[1], 1, -2)  -- "lv:{k}:"
for n = 1, #jobs do grab(prefix .. 'h:x:' .. jobs[n]) end
local meta = redis.call('HMGET', KEYS[3], 'e', 's', 'b')
return {meta[1] or false, meta[2] or false, meta[3] or false, out}
