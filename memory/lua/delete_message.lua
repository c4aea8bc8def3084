-- Remove the turn stored for one message id (its author deleted the message).
-- KEYS: turns (zset), turn (hash), msg (hash)
-- ARGV: message id
-- Returns 1 when a turn was removed, else 0.
local id = redis.call('HGET', KEYS[3], ARGV[1])
if not id then
  return 0
end
redis.call('ZREM', KEYS[1], id)
redis.call('HDEL', KEYS[2], id)
redis.call('HDEL', KEYS[3], ARGV[1])
return 1
