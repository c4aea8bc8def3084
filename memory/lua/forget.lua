-- Delete every key of one user, in every scope, atomically.
-- KEYS: index, then the members of the index as the caller read it that are this
--       user's keys (every key the bot indexes is; all share the user's hash tag)
-- ARGV: how many members the caller read in all
-- Returns the number of turns deleted, or -1 when the index changed since it was
-- read (the caller reads it again and retries).
if redis.call('SCARD', KEYS[1]) ~= tonumber(ARGV[1]) then
  return -1
end
local turns = 0
for i = 2, #KEYS do
  local key = KEYS[i]
  if redis.call('SISMEMBER', KEYS[1], key) == 0 then
    return -1
  end
  if string.sub(key, -5) == ':turn' and redis.call('TYPE', key)['ok'] == 'hash' then
    turns = turns + redis.call('HLEN', key)
  end
end
for i = 1, #KEYS do
  redis.call('DEL', KEYS[i])
end
return turns
