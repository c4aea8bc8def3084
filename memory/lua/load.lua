-- Everything one reply needs from a scope, in one round trip. Only index entries are
-- read for the recent turns ("<u|a> <time> <tokens> <terms>"), full records only for
-- the turns that fit the budget, and recall candidates through the postings of the
-- query's terms, so the cost follows the window and the matches, not the history.
-- KEYS: turns (zset), turn (hash), terms (hash), profile, summary, postings, stats,
--       taste (hash)
-- ARGV: most recent turns, token budget for them, most recall candidates, then the
--       query's search terms
-- Returns {recent, candidates, profile, summary, stats, taste}:
--   recent      id1, raw1, id2, raw2, ... newest first, until the count or the budget
--               is reached (a turn without an index entry counts as zero tokens)
--   candidates  one string: "<id> <entry>" lines for user turns older than the recent
--               ones that share a term with the query, newest first
--   stats       "<user turns indexed> <their terms in all>", for BM25's statistics
local most_recent = tonumber(ARGV[1])
local budget = tonumber(ARGV[2])
local most_candidates = tonumber(ARGV[3])
local ids = redis.call('ZREVRANGE', KEYS[1], 0, most_recent - 1)
local recent_ids = {}
local oldest = nil
if #ids > 0 then
  local entries = redis.call('HMGET', KEYS[3], unpack(ids))
  local used = 0
  for i, id in ipairs(ids) do
    local tokens = 0
    if entries[i] then
      tokens = tonumber(string.match(entries[i], '^%a %S+ (%d+)')) or 0
    end
    if used + tokens > budget then
      break
    end
    used = used + tokens
    recent_ids[#recent_ids + 1] = id
    oldest = tonumber(id)
  end
end
if oldest == nil then
  oldest = math.huge
end

local recent = {}
if #recent_ids > 0 then
  local raws = redis.call('HMGET', KEYS[2], unpack(recent_ids))
  for i, id in ipairs(recent_ids) do
    if raws[i] then
      recent[#recent + 1] = id
      recent[#recent + 1] = raws[i]
    end
  end
end

local lines = {}
if most_candidates > 0 and #ARGV >= 4 then
  local terms = {}
  for i = 4, #ARGV do
    terms[#terms + 1] = ARGV[i]
  end
  local lists = redis.call('HMGET', KEYS[6], unpack(terms))
  local seen, found = {}, {}
  for _, list in ipairs(lists) do
    if list then
      for id in string.gmatch(list, '%d+') do
        local n = tonumber(id)
        if n < oldest and not seen[n] then
          seen[n] = true
          found[#found + 1] = n
        end
      end
    end
  end
  table.sort(found, function(a, b) return a > b end)
  local wanted = {}
  for i = 1, math.min(#found, most_candidates) do
    wanted[i] = tostring(found[i])
  end
  if #wanted > 0 then
    local entries = redis.call('HMGET', KEYS[3], unpack(wanted))
    for i, id in ipairs(wanted) do
      if entries[i] then
        lines[#lines + 1] = id .. ' ' .. entries[i]
      end
    end
  end
end

local stats = redis.call('HMGET', KEYS[7], 'docs', 'terms')
return {recent, table.concat(lines, '\n'), redis.call('HGETALL', KEYS[4]),
        redis.call('GET', KEYS[5]), (stats[1] or '0') .. ' ' .. (stats[2] or '0'),
        redis.call('HGETALL', KEYS[8])}
