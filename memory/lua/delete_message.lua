-- Remove the turn stored for one message id (its author deleted the message), with
-- its recall entry and the profile facts it stated; a summary covering it goes stale.
-- KEYS: turns (zset), turn (hash), msg (hash), terms (hash), profile (hash), summary,
--       postings (hash), stats (hash)
-- ARGV: message id
-- Returns 1 when a turn was removed, else 0.
local id = redis.call('HGET', KEYS[3], ARGV[1])
if not id then
  return 0
end
redis.call('ZREM', KEYS[1], id)
redis.call('HDEL', KEYS[2], id)
redis.call('HDEL', KEYS[3], ARGV[1])
unindex(KEYS[7], KEYS[8], id, redis.call('HGET', KEYS[4], id))
redis.call('HDEL', KEYS[4], id)
drop_facts_of(KEYS[5], ARGV[1])
stale_if_covered(KEYS[6], id)
return 1
