-- Store one trivia question and its expiry in one step: a process that stops between
-- the two never leaves a question behind that never expires.
-- KEYS: question (hash)
-- ARGV: ttl seconds, then field, value, ... (answer, deadline, title id, options, text)
-- Returns 1.
for i = 2, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
return 1
