-- Newest turns of a scope, newest first, until a count or a token budget is reached.
-- KEYS: turns (zset), turn (hash)
-- ARGV: most turns, token budget
-- Returns a flat list id1, raw1, id2, raw2, ... ; unreadable records are returned as
-- they are (counted as zero tokens) so the caller can log and skip them.
local ids = redis.call('ZREVRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
if #ids == 0 then
  return {}
end
local raws = redis.call('HMGET', KEYS[2], unpack(ids))
local budget = tonumber(ARGV[2])
local used = 0
local out = {}
for i, id in ipairs(ids) do
  local raw = raws[i]
  if raw then
    local tokens = 0
    local ok, rec = pcall(cjson.decode, raw)
    if ok and type(rec) == 'table' and type(rec.tokens) == 'number' then
      tokens = rec.tokens
    end
    if used + tokens > budget then
      break
    end
    used = used + tokens
    out[#out + 1] = id
    out[#out + 1] = raw
  end
end
return out
