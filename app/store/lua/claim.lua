--[[
  Claims an Idempotency-Key for a submit. The key holds
  "fingerprint|task id|deadline µs"; an entry whose task has no record once
  its deadline has passed belongs to a submit that failed, and is replaced.

  Input:
    KEYS[1]  the key          errand:idem:<sha256>

    ARGV[1]  the request's fingerprint
    ARGV[2]  task id
    ARGV[3]  deadline, µs since the epoch
    ARGV[4]  seconds to keep the key
    ARGV[5]  the record key prefix   errand:task:

  Output:
    {'new'}                      claimed by this submit
    {'existing', fp, id}         the key made task id (with fingerprint fp)
    {'inflight', fp, id}         a submit with this key is still on its way
]]
local current = redis.call('GET', KEYS[1])
if current then
  local fp, id, deadline = string.match(current, '^([^|]*)|([^|]*)|([^|]*)$')
  if redis.call('EXISTS', ARGV[5] .. id) == 1 then return {'existing', fp, id} end
  local t = redis.call('TIME')
  if t[1] * 1000000 + t[2] <= tonumber(deadline) then return {'inflight', fp, id} end
end
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. ARGV[2] .. '|' .. ARGV[3], 'EX', ARGV[4])
return {'new'}
