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
local facts = redis.call('HGETALL', KEYS[5])
for i = 1, #facts, 2 do
  local ok, fact = pcall(cjson.decode, facts[i + 1])
  if ok and type(fact) == 'table' and fact.message_id == ARGV[1] then
    redis.call('HDEL', KEYS[5], facts[i])
  end
end
local raw = redis.call('GET', KEYS[6])
if raw then
  local ok, summary = pcall(cjson.decode, raw)
  if ok and type(summary) == 'table' and tonumber(summary.upto or 0) >= tonumber(id) then
    summary.stale = true
    redis.call('SET', KEYS[6], cjson.encode(summary), 'KEEPTTL')
  end
end
return 1
