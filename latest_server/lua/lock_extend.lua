-- lock_extend.lua: heartbeat of a lock holder.
-- KEYS[1] lock key   ARGV[1] token   ARGV[2] ttl in ms
-- returns 1 if extended, 0 if the lock is not ours any more
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
