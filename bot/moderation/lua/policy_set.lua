-- Replace a server's stored policy overrides, unless they changed since the caller read
-- them (compare and set, so two admins' changes never undo each other).
-- KEYS: modpolicy (string)
-- ARGV: '1' when the caller read a value ('0' when there was none), the value read,
--       the new value ('' deletes the key: nothing differs from the defaults)
-- Returns 1 when written, 0 when the value changed meanwhile (the caller reads again).
local read = false
if ARGV[1] == '1' then
  read = ARGV[2]
end
if redis.call('GET', KEYS[1]) ~= read then
  return 0
end
if ARGV[3] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[3])
end
return 1
