-- Everything one reply needs from a scope, in one round trip.
-- KEYS: turns (zset), turn (hash), terms (hash), profile (hash), summary (string)
-- ARGV: most recent turns, token budget for them, most recall candidates
-- Returns {recent, candidates, profile, summary}:
--   recent      id1, raw1, id2, raw2, ... newest first, until the count or the budget
--               is reached (an unreadable record counts as zero tokens; the caller
--               logs and skips it)
--   candidates  id, "<time> <terms>" of older user turns, newest first
--   profile     field, fact JSON, ...
--   summary     the summary JSON, or false
local ids = redis.call('ZREVRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
local recent = {}
local taken = 0
if #ids > 0 then
  local raws = redis.call('HMGET', KEYS[2], unpack(ids))
  local budget = tonumber(ARGV[2])
  local used = 0
  for i, id in ipairs(ids) do
    local raw = raws[i]
    taken = i - 1
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
      recent[#recent + 1] = id
      recent[#recent + 1] = raw
    end
    taken = i
  end
end

local candidates = {}
local most = tonumber(ARGV[3])
if most > 0 then
  local older = redis.call('ZREVRANGE', KEYS[1], taken, taken + most - 1)
  if #older > 0 then
    local entries = redis.call('HMGET', KEYS[3], unpack(older))
    for i, id in ipairs(older) do
      if entries[i] then
        candidates[#candidates + 1] = id
        candidates[#candidates + 1] = entries[i]
      end
    end
  end
end

return {recent, candidates, redis.call('HGETALL', KEYS[4]), redis.call('GET', KEYS[5])}
