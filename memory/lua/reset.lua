-- Clear one scope of one user.
-- KEYS: index, turns (zset), turn (hash), msg (hash), seq (string)
-- Returns the number of turns deleted.
local turns = redis.call('HLEN', KEYS[3])
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5])
redis.call('SREM', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5])
return turns
