-- Remove taste items: by field, or every item stated in one message.
-- KEYS: index, taste (hash)
-- ARGV: mode ('field' or 'message'), then fields or one message id
-- Returns how many items went.
local removed = 0
if ARGV[1] == 'field' then
  for i = 2, #ARGV do
    removed = removed + redis.call('HDEL', KEYS[2], ARGV[i])
  end
else
  local all = redis.call('HGETALL', KEYS[2])
  for i = 1, #all, 2 do
    local ok, item = pcall(cjson.decode, all[i + 1])
    if ok and type(item) == 'table' and item.message_id == ARGV[2] then
      removed = removed + redis.call('HDEL', KEYS[2], all[i])
    end
  end
end
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('SREM', KEYS[1], KEYS[2])
end
return removed
