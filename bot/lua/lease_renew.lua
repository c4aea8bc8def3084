-- Push a held lease's end a whole lease forward (Redis's clock, as inflight.lua's);
-- nothing when the lease is not held (it ran out, or was given back).
-- KEYS: the leases (sorted set: request id scored by lease end in ms)
-- ARGV: request id, lease ms
-- Returns 1 when renewed, else 0.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
