-- The catalog and its version, read at one instant: a version never labels titles
-- older than it (else a process would never reload the newer ones).
-- KEYS: meta (hash), titles (hash)
-- Returns {version (false when none), title id, title JSON, ...}.
local titles = redis.call('HGETALL', KEYS[2])
table.insert(titles, 1, redis.call('HGET', KEYS[1], 'version'))
return titles
