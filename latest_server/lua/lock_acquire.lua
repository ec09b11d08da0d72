#!lua flags=allow-oom
-- lock_acquire.lua: take a job lock (SET NX PX) and its fencing number in one step. allow-oom:
-- the offload job is what frees memory, so it must start when Redis is out of memory (a plain
-- SET or INCR is refused then, and Redis would never recover by itself). Two small keys.
-- KEYS[1] lock key   KEYS[2] fence counter   ARGV[1] token   ARGV[2] ttl in ms
-- returns the fencing number when taken, 0 when another holder has it
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 0 end
return redis.call('INCR', KEYS[2])
