-- Shared by the scripts that change turns (prepended to each when it is loaded):
-- keeping the recall postings (term -> user turn ids) and their statistics in step,
-- and what was drawn from a turn (facts, the summary) when it changes or goes.
-- The caller passes its KEYS to these helpers.
local function entry_words(entry)
  -- "<u|a> <time> <tokens> <terms...>" -> role, list of terms
  local role, rest = string.match(entry or '', '^(%a) %S+ %d+ ?(.*)$')
  local words = {}
  if rest then
    for w in string.gmatch(rest, '%S+') do
      words[#words + 1] = w
    end
  end
  return role, words
end

local function unique(words)
  local seen, out = {}, {}
  for _, w in ipairs(words) do
    if not seen[w] then
      seen[w] = true
      out[#out + 1] = w
    end
  end
  return out
end

local function unindex(postings, stats, id, entry)
  local role, words = entry_words(entry)
  if role ~= 'u' then
    return
  end
  for _, w in ipairs(unique(words)) do
    local list = redis.call('HGET', postings, w)
    if list then
      local kept = string.gsub(' ' .. list .. ' ', ' ' .. id .. ' ', ' ')
      kept = string.match(kept, '^%s*(.-)%s*$')
      if kept == '' then
        redis.call('HDEL', postings, w)
      else
        redis.call('HSET', postings, w, kept)
      end
    end
  end
  redis.call('HINCRBY', stats, 'docs', -1)
  redis.call('HINCRBY', stats, 'terms', -#words)
end

local function index(postings, stats, id, entry)
  local role, words = entry_words(entry)
  if role ~= 'u' then
    return
  end
  for _, w in ipairs(unique(words)) do
    local list = redis.call('HGET', postings, w)
    if list then
      redis.call('HSET', postings, w, list .. ' ' .. id)
    else
      redis.call('HSET', postings, w, id)
    end
  end
  redis.call('HINCRBY', stats, 'docs', 1)
  redis.call('HINCRBY', stats, 'terms', #words)
end

local function drop_facts_of(profile, message_id)
  -- Profile facts stated in this message go with it.
  local facts = redis.call('HGETALL', profile)
  for i = 1, #facts, 2 do
    local ok, fact = pcall(cjson.decode, facts[i + 1])
    if ok and type(fact) == 'table' and fact.message_id == message_id then
      redis.call('HDEL', profile, facts[i])
    end
  end
end

local function stale_if_covered(summary_key, id)
  -- A summary that folded this turn in must be rebuilt.
  local raw = redis.call('GET', summary_key)
  if raw then
    local ok, summary = pcall(cjson.decode, raw)
    if ok and type(summary) == 'table' and tonumber(summary.upto or 0) >= tonumber(id) then
      summary.stale = true
      redis.call('SET', summary_key, cjson.encode(summary), 'KEEPTTL')
    end
  end
end

