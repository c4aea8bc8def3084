-- Clear one scope of one user.
-- KEYS: index, then every key of the scope (turn hash third)
-- Returns the number of turns deleted.
local turns = redis.call('HLEN', KEYS[3])
for i = 2, #KEYS do
  redis.call('DEL', KEYS[i])
  redis.call('SREM', KEYS[1], KEYS[i])
end
return turns
