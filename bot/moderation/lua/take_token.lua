-- Take one token from a token bucket, atomically (correct with many bot processes).
-- KEYS: the bucket (hash: tokens, at)
-- ARGV: refill rate in tokens per second, burst (bucket size), tokens to take
-- Returns {1, 0} when taken, else {0, milliseconds until one is available}.
-- Time comes from the Redis server, so every process sees the same clock.
local rate, burst, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate / 1000)
local allowed, wait = 0, 0
if tokens >= cost then
  tokens = math.min(burst, tokens - cost)  -- a negative cost gives tokens back
  allowed = 1
else
  wait = math.ceil((cost - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', now)
-- Gone once it would be full again: an idle bucket costs nothing.
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) * 1000 / rate) + 1000)
return {allowed, wait}
