-- lock_release.lua: compare-and-delete.
-- KEYS[1] lock key   ARGV[1] token
-- returns 1 if released, 0 if it was not ours
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
