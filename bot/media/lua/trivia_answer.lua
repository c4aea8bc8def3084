-- Take one answer to a trivia question: at most one per member, none after the
-- deadline; a right answer adds points to the server's leaderboard.
-- KEYS: question (hash: answer, deadline), answered (set), leaderboard (zset)
-- ARGV: member id, chosen option, now (seconds), points for a right answer
-- Returns {outcome, right option (-1 when the question is gone), member's score}, the
-- outcome being right, wrong, again (answered before), late or gone.
local member = ARGV[1]
local score = tonumber(redis.call('ZSCORE', KEYS[3], member) or '0')
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'gone', -1, score}
end
local answer = tonumber(redis.call('HGET', KEYS[1], 'answer'))
local deadline = tonumber(redis.call('HGET', KEYS[1], 'deadline'))
if tonumber(ARGV[3]) > deadline then
  return {'late', answer, score}
end
if redis.call('SADD', KEYS[2], member) == 0 then
  return {'again', answer, score}
end
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[2], ttl)
end
if tonumber(ARGV[2]) == answer then
  score = tonumber(redis.call('ZINCRBY', KEYS[3], ARGV[4], member))
  return {'right', answer, score}
end
return {'wrong', answer, score}
