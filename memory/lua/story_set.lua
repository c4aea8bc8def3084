-- Save the interactive story in progress, or end it, with the user's index in step (so
-- /export shows it and /forget deletes it).
-- KEYS: index, story (string)
-- ARGV: the story's JSON ('' ends it), ttl seconds (0 = keep)
-- Returns 1.
if ARGV[1] == '' then
  redis.call('DEL', KEYS[2])
  redis.call('SREM', KEYS[1], KEYS[2])
  return 1
end
local ttl = tonumber(ARGV[2])
if ttl > 0 then
  redis.call('SET', KEYS[2], ARGV[1], 'EX', ttl)
else
  redis.call('SET', KEYS[2], ARGV[1])
end
redis.call('SADD', KEYS[1], KEYS[2])
return 1
