#!lua flags=allow-oom
-- transfer.lua: hand a variable's live history to a job. RENAME is atomic: new writes start a
-- fresh live stream (the seq counter in lv:{k}:meta carries on), readers find the job copy
-- through the jobs set.
--
-- KEYS[1] lv:{k}:h   KEYS[2] lv:{k}:i   KEYS[3] lv:{k}:h:x:<job>   KEYS[4] lv:{k}:i:x:<job>
-- KEYS[5] lv:{k}:x (jobs set)   KEYS[6] the lock the job holds (left out on a Redis Cluster
--         when it is in another slot: the job then checks it itself just before)
-- ARGV[1] the job's lock token   ARGV[2] job id
-- returns the number of entries handed over, 0 if there was no live history, -1 if the lock is
-- no longer ours (the job must stop)
-- allow-oom: a job moves history out of Redis when it is out of memory; the jobs set (SADD)
-- holds one short member per running job.
if KEYS[6] and redis.call('GET', KEYS[6]) ~= ARGV[1] then return -1 end
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('SADD', KEYS[5], ARGV[2])
redis.call('RENAME', KEYS[1], KEYS[3])
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('RENAME', KEYS[2], KEYS[4]) end
return redis.call('XLEN', KEYS[3])
