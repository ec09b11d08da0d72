-- iudx_forget.lua: after a delete (LATEST_BACKEND=redisjson), remove the resource's member from
-- its group's RedisJSON key, only while the latest hash still holds no document: a write that
-- came between the delete and this call has set the member again, and it stays.
--
-- KEYS[1] lv:{k}:latest  hash: v, doc, id, s, ev (delete.lua left only v)
-- KEYS[2] <prefix><group id>  RedisJSON object of the group
-- ARGV[1] the member's path, ._<sha1>
-- returns the number of members removed (0 or 1), or -1 when a document is back
if redis.call('HEXISTS', KEYS[1], 'doc') == 1 then
  return -1
end
if redis.call('EXISTS', KEYS[2]) == 0 then
  return 0
end
return redis.call('JSON.DEL', KEYS[2], ARGV[1])
