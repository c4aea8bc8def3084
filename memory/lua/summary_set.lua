-- Replace the rolling summary only if nobody replaced it since it was read.
-- KEYS: summary (string)
-- ARGV: the version that was read (0 for none), new summary JSON without a version,
--       ttl seconds (0 = keep)
-- Returns the new version, or 0 when a newer summary was written meanwhile.
local raw = redis.call('GET', KEYS[1])
local version = 0
if raw then
  local ok, summary = pcall(cjson.decode, raw)
  if ok and type(summary) == 'table' then
    version = tonumber(summary.version or 0)
  end
end
if version ~= tonumber(ARGV[1]) then
  return 0
end
local new = cjson.decode(ARGV[2])
new.version = version + 1
local ttl = tonumber(ARGV[3])
if ttl > 0 then
  redis.call('SET', KEYS[1], cjson.encode(new), 'EX', ttl)
else
  redis.call('SET', KEYS[1], cjson.encode(new))
end
return new.version
