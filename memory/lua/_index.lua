-- Shared by the scripts that change turns (prepended to each when it is loaded):
-- keeping the recall postings (term -> user turn ids) and their statistics in step.
-- KEYS of the caller give the postings and stats hashes to these helpers.
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

local function unindex(postings, stats, id, entry)
  local role, words = entry_words(entry)
  if role ~= 'u' then
    return
  end
  local seen = {}
  for _, w in ipairs(words) do
    if not seen[w] then
      seen[w] = true
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
  end
  redis.call('HINCRBY', stats, 'docs', -1)
  redis.call('HINCRBY', stats, 'terms', -#words)
end

local function index(postings, stats, id, entry)
  local role, words = entry_words(entry)
  if role ~= 'u' then
    return
  end
  local seen = {}
  for _, w in ipairs(words) do
    if not seen[w] then
      seen[w] = true
      local list = redis.call('HGET', postings, w)
      if list then
        redis.call('HSET', postings, w, list .. ' ' .. id)
      else
        redis.call('HSET', postings, w, id)
      end
    end
  end
  redis.call('HINCRBY', stats, 'docs', 1)
  redis.call('HINCRBY', stats, 'terms', #words)
end

