-- Replace the text of the turn stored for one message id (its author edited it).
-- KEYS: turn (hash), msg (hash)
-- ARGV: message id, new text, its token count
-- Returns 1 when a turn was updated, else 0 (unknown id, or an unreadable record).
local id = redis.call('HGET', KEYS[2], ARGV[1])
if not id then
  return 0
end
local raw = redis.call('HGET', KEYS[1], id)
if not raw then
  return 0
end
local ok, rec = pcall(cjson.decode, raw)
if not ok or type(rec) ~= 'table' then
  return 0
end
rec.text = ARGV[2]
rec.tokens = tonumber(ARGV[3])
rec.edited = true
redis.call('HSET', KEYS[1], id, cjson.encode(rec))
return 1
