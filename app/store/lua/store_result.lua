--[[
  Stores a task state for Celery's result backend, and keeps the task's record
  in step in the same round trip: a PROGRESS is kept in the record (so the final
  resource still shows it), a final state closes the record, gives it the
  result's lifetime and frees the owner's in-flight place; a retry counts; every
  state but PROGRESS counts in the metrics (per task type), and a run's time in
  the run-time histogram. A SUCCESS already stored is never overwritten (as
  Celery's own backend does, but without its extra GET), and a record that does
  not exist (an id this API never issued) is not created. A step of a workflow
  that becomes final counts down the workflow's open steps and keeps no expiry
  of its own; the last one gives the workflow and every step the records'
  lifetime together, and, when the workflow has a callback_url, says its
  webhook is due (3).

  Input:
    KEYS[1]  Celery's result           celery-task-meta-<id>
    KEYS[2]  the task's record         errand:task:<id>
    KEYS[3]  the state counters        errand:metrics:states
    KEYS[4]  the run-time histogram    errand:metrics:runtime

    ARGV[1]  the result (Celery's JSON meta)
    ARGV[2]  seconds the result lives (0: for ever)
    ARGV[3]  the state
    ARGV[4]  now (ISO 8601): finished_at of a final state
    ARGV[5]  seconds the record lives once final (0: for ever)
    ARGV[6]  'final' for SUCCESS, FAILURE and REVOKED, else ''
    ARGV[7]  task id
    ARGV[8]  the in-flight key prefix  errand:inflight:
    ARGV[9]  the run-time bucket ('0.01', ..., '+Inf'), or '' when no run ended
    ARGV[10] the run time, seconds
    ARGV[11] the by-state index prefix  errand:bystate:
    ARGV[12] the workflow key prefix    errand:workflow:

  A record that holds a cancel takes no state but REVOKED: a task that a pool
  could not stop (threads, gevent, solo) cannot turn a cancelled task back into
  PROGRESS or SUCCESS; told so (4), the worker stops it at its progress report.

  Output:
    2  stored, the task's first final state, and it has a callback_url: its
       webhook is to be delivered now (this answer comes once per task)
    3  stored, the last open step of a workflow with a callback_url became
       final (the workflow is final now): the workflow's webhook is to be
       delivered (once per workflow: open reaches 0 once; a workflow's steps
       have no callback_url of their own)
    1  stored
    0  a SUCCESS was stored already: nothing changed
    4  the task was cancelled: nothing changed
]]
--- @include "set_state"

-- A workflow's steps live until its last one is final; then the workflow and all
-- its steps (records and results) get the records' lifetime together. True when
-- this call closed the workflow (its last open step became final).
local function close_step(workflow, first_final)
  local open = tonumber(redis.call('HGET', workflow, 'open') or '0')
  if first_final then open = redis.call('HINCRBY', workflow, 'open', -1) end
  if open > 0 then
    redis.call('PERSIST', KEYS[1])  -- the result too lives until the workflow ends
    return false
  end
  local closed = first_final and open == 0
  if tonumber(ARGV[5]) == 0 then return closed end
  local record_prefix = string.sub(KEYS[2], 1, #KEYS[2] - #ARGV[7])
  local result_prefix = string.sub(KEYS[1], 1, #KEYS[1] - #ARGV[7])
  for id in string.gmatch(redis.call('HGET', workflow, 'tasks') or '', '[^,]+') do
    redis.call('EXPIRE', record_prefix .. id, ARGV[5])
    redis.call('EXPIRE', result_prefix .. id, ARGV[5])
  end
  redis.call('EXPIRE', workflow, ARGV[5])
  return closed
end

local current = redis.call('GET', KEYS[1])
if current and string.find(string.sub(current, 1, 100), '"status":%s*"SUCCESS"') then
  return 0
end
if ARGV[3] ~= 'REVOKED' and redis.call('HEXISTS', KEYS[2], 'revoked_at') == 1 then
  return 4
end
local ttl = tonumber(ARGV[2])
if ttl > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ttl)
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
local task = redis.call('HGET', KEYS[2], 'task')
if task then
  set_state(KEYS[2], ARGV[3], ARGV[7], ARGV[11])
  -- A final state counts once: a cancelled countdown task is stored REVOKED at the
  -- cancel and again when a worker discards it at its ETA.
  local first_final = ARGV[6] == 'final'
    and redis.call('HSETNX', KEYS[2], 'finished_at', ARGV[4]) == 1
  if ARGV[3] == 'PROGRESS' then
    redis.call('HSET', KEYS[2], 'progress', ARGV[1])  -- the last progress outlives the state
  elseif ARGV[6] ~= 'final' or first_final then
    redis.call('HINCRBY', KEYS[3], task .. '|' .. ARGV[3], 1)
  end
  if ARGV[9] ~= '' then
    redis.call('HINCRBY', KEYS[4], task .. '|' .. ARGV[9], 1)
    redis.call('HINCRBY', KEYS[4], task .. '|count', 1)
    redis.call('HINCRBYFLOAT', KEYS[4], task .. '|sum', ARGV[10])
  end
  if ARGV[3] == 'RETRY' then
    redis.call('HINCRBY', KEYS[2], 'retries', 1)
  elseif ARGV[6] == 'final' then
    local owner = redis.call('HGET', KEYS[2], 'owner')
    if owner then redis.call('ZREM', ARGV[8] .. owner, ARGV[7]) end
    local workflow = redis.call('HGET', KEYS[2], 'workflow')
    if workflow and redis.call('EXISTS', ARGV[12] .. workflow) == 1 then
      if close_step(ARGV[12] .. workflow, first_final)
        and redis.call('HEXISTS', ARGV[12] .. workflow, 'callback_url') == 1 then
        return 3
      end
    elseif tonumber(ARGV[5]) > 0 then
      redis.call('EXPIRE', KEYS[2], ARGV[5])
    end
  end
  if first_final and redis.call('HEXISTS', KEYS[2], 'callback_url') == 1 then return 2 end
end
return 1
