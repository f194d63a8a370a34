--[[
  Run by a worker as a task starts: may it run?

  Input:
    KEYS[1]  the task's record   errand:task:<id>

    ARGV[1]  the submit's deadline, µs since the epoch (0 if unknown)
    ARGV[2]  started_at (ISO 8601), set if the task runs for the first time

  Output:
    'run'      the record exists and holds no cancel: started_at is set
    'revoked'  the record holds a cancel
    'wait'     no record yet, but the API's write may still be in flight
    'orphan'   no record, and none can come any more
]]
if redis.call('EXISTS', KEYS[1]) == 0 then
  local t = redis.call('TIME')
  if t[1] * 1000000 + t[2] > tonumber(ARGV[1]) then return 'orphan' end
  return 'wait'
end
if redis.call('HEXISTS', KEYS[1], 'revoked_at') == 1 then return 'revoked' end
redis.call('HSETNX', KEYS[1], 'started_at', ARGV[2])
return 'run'
