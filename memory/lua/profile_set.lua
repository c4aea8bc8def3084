-- Set profile facts; a fact never replaces one stated in a newer turn.
-- KEYS: profile (hash)
-- ARGV: turn id of the statement, ttl seconds (0 = keep), then field, fact JSON, ...
-- Returns how many facts were written.
local turn = tonumber(ARGV[1])
local written = 0
for i = 3, #ARGV, 2 do
  local current = redis.call('HGET', KEYS[1], ARGV[i])
  local newer = false
  if current then
    local ok, fact = pcall(cjson.decode, current)
    newer = ok and type(fact) == 'table' and tonumber(fact.turn_id or 0) > turn
  end
  if not newer then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    written = written + 1
  end
end
local ttl = tonumber(ARGV[2])
if written > 0 and ttl > 0 then
  redis.call('EXPIRE', KEYS[1], ttl)
end
return written
