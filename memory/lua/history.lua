-- Every turn record of a scope and their order, read at one instant (for /export).
-- KEYS: turn (hash), turns (zset)
-- Returns {turn id, record, turn id, record, ..., {turn ids oldest first}}: the hash
-- flattened, then the order as one list.
local records = redis.call('HGETALL', KEYS[1])
records[#records + 1] = redis.call('ZRANGE', KEYS[2], 0, -1)
return records
