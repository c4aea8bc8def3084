-- Record a moderation strike against a member and start a cool-down when the strikes
-- still within their decay window reach the limit. One atomic call.
-- KEYS: strikes (sorted set of strike ids scored by time in ms), cooldown (string)
-- ARGV: strike id, decay ms, strike limit (0: never a cool-down), cool-down ms
-- Returns {strikes within the window, cool-down ms left (0 when none)}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local decay, limit, cooldown = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - decay)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('PEXPIRE', KEYS[1], decay)
local count = redis.call('ZCARD', KEYS[1])
if limit > 0 and count >= limit and cooldown > 0 then
  redis.call('SET', KEYS[2], now, 'PX', cooldown)
end
local left = redis.call('PTTL', KEYS[2])
if left < 0 then left = 0 end
return {count, left}
