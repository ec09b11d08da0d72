-- finish.lua: drop a job-owned copy once its transfer object is durable.
--
-- KEYS[1] lv:{k}:h:x:<job>   KEYS[2] lv:{k}:i:x:<job>   KEYS[3] lv:{k}:x (jobs set)
-- KEYS[4] the lock the finishing job holds (left out on a Redis Cluster when it is in another
--         slot: the job then checks it itself just before)
-- ARGV[1] that job's lock token   ARGV[2] the job id of the copy
-- returns 1, or -1 if the lock is no longer ours (nothing deleted)
if KEYS[4] and redis.call('GET', KEYS[4]) ~= ARGV[1] then return -1 end
redis.call('UNLINK', KEYS[1], KEYS[2])
redis.call('SREM', KEYS[3], ARGV[2])
return 1
