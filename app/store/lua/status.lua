--[[
  A status read in one round trip: count the key's rate window, then read the
  record and, only if the caller may see it, Celery's result. Another owner's
  task reads nothing more than an unknown id does.

  Input:
    KEYS[1]    the rate window, or ''    errand:limits:read:<owner>
    KEYS[2]    the record                errand:task:<id>
    KEYS[3]    Celery's result           celery-task-meta-<id>

    ARGV[1]    requests the rate window allows (0: no limit)
    ARGV[2]    the window, seconds
    ARGV[3]    the caller's key id, or '' for a caller who may see every task

  FIELDS (below) is app.store.records.FIELDS, put in when the script is loaded:
  the record fields a status read returns; the first is 'task', the second 'owner'.

  Output:
    {'ok', used, reset, result or false, the fields' values (false for a field not set)...}
    {'unknown', used, reset}     no such record, or another owner's
    {'rate', used, reset}        the rate window is spent: nothing read
]]
--- @list FIELDS
local limit = tonumber(ARGV[1])
local used, reset = 0, -1
if limit > 0 then
  used = tonumber(redis.call('GET', KEYS[1]) or '0')
  if used >= limit then return {'rate', used, redis.call('TTL', KEYS[1])} end
  used = redis.call('INCR', KEYS[1])
  if used == 1 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
  reset = redis.call('TTL', KEYS[1])
end
local values = redis.call('HMGET', KEYS[2], unpack(FIELDS))
if not values[1] or (ARGV[3] ~= '' and values[2] ~= ARGV[3]) then
  return {'unknown', used, reset}
end
return {'ok', used, reset, redis.call('GET', KEYS[3]), unpack(values)}
