-- Replace the text of the turn stored for one message id (its author edited it): its
-- record, its recall entry, and the profile facts it stated (the caller sets the new
-- ones); a summary covering it goes stale.
-- KEYS: turn (hash), msg (hash), terms (hash), profile (hash), summary (string),
--       postings (hash), stats (hash)
-- ARGV: message id, new text, its token count, the new index entry without its role
-- Returns the turn id when a turn was updated, else 0.
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
local role = 'a'
if rec.role == 'user' then
  role = 'u'
end
unindex(KEYS[6], KEYS[7], id, redis.call('HGET', KEYS[3], id))
redis.call('HSET', KEYS[3], id, role .. ' ' .. ARGV[4])
index(KEYS[6], KEYS[7], id, role .. ' ' .. ARGV[4])
drop_facts_of(KEYS[4], ARGV[1])
stale_if_covered(KEYS[5], id)
return tonumber(id)
