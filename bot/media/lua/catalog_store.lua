-- Write an imported catalog and bump its version, in one step: a process that reads the
-- catalog sees all of an import or none of it, and reloads once the version moves.
-- KEYS: titles (hash), meta (hash)
-- ARGV: '1' to replace (titles not in this import go), source, imported at, then
--       title id, title JSON, ...
-- Returns the new version.
if ARGV[1] == '1' then
  redis.call('DEL', KEYS[1])
end
for i = 4, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('HSET', KEYS[2], 'source', ARGV[2], 'imported_at', ARGV[3])
return redis.call('HINCRBY', KEYS[2], 'version', 1)
