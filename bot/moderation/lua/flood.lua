-- Note one message of a member and say whether they are flooding: how many messages
-- they sent within the window, and how many of those had this same text.
-- KEYS: flood (sorted set: member "<ms>:<text hash>", scored by time in ms)
-- ARGV: text hash, window ms, most entries kept
-- Returns {messages within the window, of them with this text}, this one included.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window, keep = tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('ZADD', KEYS[1], now, now .. ':' .. ARGV[1] .. ':' .. redis.call('ZCARD', KEYS[1]))
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -keep - 1)
redis.call('PEXPIRE', KEYS[1], window)
local same = 0
for _, member in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local hash = string.match(member, '^%d+:([^:]+):')
  if hash == ARGV[1] then same = same + 1 end
end
return {redis.call('ZCARD', KEYS[1]), same}
