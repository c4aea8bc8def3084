-- Append one exchange (user turn + assistant turn) to a scope, atomically.
-- KEYS: index, turns (zset), turn (hash), msg (hash), seq (string), terms (hash),
--       profile (hash), summary (string), postings (hash), stats (hash): every key of
--       the scope
-- ARGV: user message id, user turn JSON, assistant turn JSON,
--       assistant message id ('' for none), cap (turns kept), ttl seconds (0 = keep),
--       the user turn's index entry, the assistant turn's index entry
--       ("<u|a> <time> <tokens> <search terms>": what load reads instead of the JSON)
-- Returns {1, user turn id, assistant turn id}, or {0, existing user turn id}
-- when this user message id was stored before (a retried write is a no-op).
local kindex, zturns, hturn, hmsg, kseq, hterms = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local postings, stats = KEYS[9], KEYS[10]
local existing = redis.call('HGET', hmsg, ARGV[1])
if existing then
  return {0, tonumber(existing)}
end
local uid = redis.call('INCR', kseq)
local aid = redis.call('INCR', kseq)
redis.call('ZADD', zturns, uid, uid, aid, aid)
redis.call('HSET', hturn, uid, ARGV[2], aid, ARGV[3])
redis.call('HSET', hmsg, ARGV[1], uid)
if ARGV[4] ~= '' then
  redis.call('HSET', hmsg, ARGV[4], aid)
end
redis.call('HSET', hterms, uid, ARGV[7], aid, ARGV[8])
index(postings, stats, uid, ARGV[7])

-- Trim the oldest turns past the cap, with their message ids and index entries.
local cap = tonumber(ARGV[5])
local excess = redis.call('ZCARD', zturns) - cap
while excess > 0 do
  local batch = math.min(excess, 500)
  local old = redis.call('ZRANGE', zturns, 0, batch - 1)
  local raws = redis.call('HMGET', hturn, unpack(old))
  local entries = redis.call('HMGET', hterms, unpack(old))
  for i, id in ipairs(old) do
    if entries[i] then
      unindex(postings, stats, id, entries[i])
    end
    local raw = raws[i]
    if raw then
      local ok, rec = pcall(cjson.decode, raw)
      if ok and type(rec) == 'table' and type(rec.message_id) == 'string' then
        if redis.call('HGET', hmsg, rec.message_id) == id then
          redis.call('HDEL', hmsg, rec.message_id)
        end
      end
    end
  end
  redis.call('ZREMRANGEBYRANK', zturns, 0, batch - 1)
  redis.call('HDEL', hturn, unpack(old))
  redis.call('HDEL', hterms, unpack(old))
  excess = excess - batch
end

local ttl = tonumber(ARGV[6])
for i = 2, #KEYS do
  redis.call('SADD', kindex, KEYS[i])
end
for _, key in ipairs(KEYS) do
  if ttl > 0 then
    redis.call('EXPIRE', key, ttl)
  else
    redis.call('PERSIST', key)
  end
end
return {1, uid, aid}
