--[[
  Run by a worker as a task starts: may it run? If so, store its STARTED state
  in the same round trip (Celery's own STARTED store is off: task_track_started).

  Input:
    KEYS[1]  the task's record     errand:task:<id>
    KEYS[2]  Celery's result       celery-task-meta-<id>
    KEYS[3]  the state counters    errand:metrics:states

    ARGV[1]  the submit's deadline, µs since the epoch (0: the record came with
             the message, so a missing one will never come)
    ARGV[2]  started_at (ISO 8601), set if the task runs for the first time
    ARGV[3]  the STARTED result (Celery's JSON meta)
    ARGV[4]  seconds the result lives (0: for ever)
    ARGV[5]  the task id
    ARGV[6]  the by-state index prefix   errand:bystate:

  Output:
    'run'      the record exists and holds no cancel: STARTED is stored
    'revoked'  the record holds a cancel
    'done'     the task has succeeded already (this is a redelivery)
    'wait'     no record yet, but the API's write may still be in flight
    'orphan'   no record, and none can come any more
]]
--- @include "set_state"

if redis.call('EXISTS', KEYS[1]) == 0 then
  local t = redis.call('TIME')
  if t[1] * 1000000 + t[2] > tonumber(ARGV[1]) then return 'orphan' end
  return 'wait'
end
if redis.call('HEXISTS', KEYS[1], 'revoked_at') == 1 then return 'revoked' end
local current = redis.call('GET', KEYS[2])
if current and string.find(string.sub(current, 1, 100), '"status":%s*"SUCCESS"') then
  return 'done'
end
redis.call('HSETNX', KEYS[1], 'started_at', ARGV[2])
set_state(KEYS[1], 'STARTED', ARGV[5], ARGV[6])
if tonumber(ARGV[4]) > 0 then
  redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[4])
else
  redis.call('SET', KEYS[2], ARGV[3])
end
redis.call('PUBLISH', KEYS[2], ARGV[3])
local task = redis.call('HGET', KEYS[1], 'task')
redis.call('HINCRBY', KEYS[3], task .. '|STARTED', 1)
return 'run'
