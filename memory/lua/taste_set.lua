-- Add taste items; liking something removes disliking it, and the other way round.
-- KEYS: index, taste (hash)
-- ARGV: ttl seconds (0 = keep), most items kept, then triples: field, item JSON,
--       opposite field ('' for none)
-- Returns how many items were written (an item new to a full profile is not).
local ttl, most = tonumber(ARGV[1]), tonumber(ARGV[2])
local written = 0
for i = 3, #ARGV, 3 do
  local field, opposite = ARGV[i], ARGV[i + 2]
  if opposite ~= '' then
    redis.call('HDEL', KEYS[2], opposite)
  end
  if redis.call('HEXISTS', KEYS[2], field) == 1 or redis.call('HLEN', KEYS[2]) < most then
    redis.call('HSET', KEYS[2], field, ARGV[i + 1])
    written = written + 1
  end
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('SADD', KEYS[1], KEYS[2])
  if ttl > 0 then
    redis.call('EXPIRE', KEYS[2], ttl)
  end
end
return written
