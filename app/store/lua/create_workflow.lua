--[[
  Writes a whole workflow before any of its messages is published: the
  workflow's record and every step's task record (PENDING, linked to the
  workflow, indexed as a submit's would be), with one in-flight place per step.
  All of it, or nothing: a refused workflow changes nothing and says which
  limit refused. As in submit.lua, Redis's own clock must be before the
  deadline, so a script that a hung Redis runs late changes nothing.

  Input:
    KEYS[1]    the rate window, or ''            errand:limits:submit:<owner>
    KEYS[2]    the owner's in-flight set, or ''  errand:inflight:<owner>
    KEYS[3]    the workflow's record             errand:workflow:<id>
    KEYS[4]    the index of every task           errand:index
    KEYS[5]    the owner's index, or ''          errand:index:owner:<owner>
    KEYS[6]    the Idempotency-Key, or ''        errand:idem:<sha256>
    KEYS[7..]  three per step, in order: its record (errand:task:<id>), its type's
               index (errand:index:<type>), the owner's index of that type, or ''

    ARGV[1]    deadline, µs since the epoch on Redis's clock
    ARGV[2]    requests the rate window allows (0: no limit)
    ARGV[3]    the window, seconds
    ARGV[4]    places in flight the owner may hold
    ARGV[5]    the workflow's id
    ARGV[6]    created, µs since the epoch (the index score)
    ARGV[7]    created_at (ISO 8601)
    ARGV[8]    the by-state index prefix         errand:bystate:
    ARGV[9]    the owner's key id, or ''
    ARGV[10]   the kind: chain or group
    ARGV[11]   'then' when a group has a final step, else ''
    ARGV[12]   the request's fingerprint (for the Idempotency-Key)
    ARGV[13]   seconds to keep the Idempotency-Key
    ARGV[14]   the workflow key prefix           errand:workflow:
    ARGV[15]   the workflow's callback_url, or ''
    ARGV[16..] five per step, in order: task id, task type, params (JSON),
               options (JSON), eta (ISO 8601, or '')

  Output:
    {'ok', used, reset}    written; used, reset: the rate window (reset -1: no limit)
    {'existing', used, reset, id}  the Idempotency-Key already made workflow id
    {'conflict'}           the Idempotency-Key was used for another request
    {'rate', used, reset}  the rate window is spent
    {'inflight', held}     the steps do not fit in the owner's places in flight
    {'late'}               past the deadline
    {'exists'}             the workflow's record exists (this script ran already)
]]
--- @include "set_state"
--- @include "admission"

local t = redis.call('TIME')
if t[1] * 1000000 + t[2] > tonumber(ARGV[1]) then return {'late'} end
if redis.call('EXISTS', KEYS[3]) == 1 then return {'exists'} end

local steps = (#KEYS - 6) / 3
local refused = refusal(KEYS[1], ARGV[2], ARGV[3], KEYS[6], ARGV[12], ARGV[14])
if refused then return refused end
if KEYS[2] ~= '' then
  local held = redis.call('ZCARD', KEYS[2])
  if held + steps > tonumber(ARGV[4]) then return {'inflight', held} end
end
count()
if KEYS[6] ~= '' then
  redis.call('SET', KEYS[6], ARGV[12] .. '|' .. ARGV[5] .. '|0', 'EX', ARGV[13])
end

local ids = {}
for i = 1, steps do
  local a = 16 + (i - 1) * 5
  local k = 7 + (i - 1) * 3
  local id = ARGV[a]
  ids[i] = id
  redis.call('HSET', KEYS[k], 'task', ARGV[a + 1], 'created_at', ARGV[7], 'created_us', ARGV[6],
             'retries', 0, 'params', ARGV[a + 2], 'options', ARGV[a + 3], 'owner', ARGV[9],
             'workflow', ARGV[5])
  if ARGV[a + 4] ~= '' then redis.call('HSET', KEYS[k], 'eta', ARGV[a + 4]) end
  set_state(KEYS[k], 'PENDING', id, ARGV[8])
  redis.call('ZADD', KEYS[4], ARGV[6], id)
  redis.call('ZADD', KEYS[k + 1], ARGV[6], id)
  if KEYS[5] ~= '' then redis.call('ZADD', KEYS[5], ARGV[6], id) end
  if KEYS[k + 2] ~= '' then redis.call('ZADD', KEYS[k + 2], ARGV[6], id) end
  if KEYS[2] ~= '' then redis.call('ZADD', KEYS[2], 'inf', id) end
end
redis.call('HSET', KEYS[3], 'kind', ARGV[10], 'then', ARGV[11], 'owner', ARGV[9],
           'created_at', ARGV[7], 'created_us', ARGV[6], 'tasks', table.concat(ids, ','),
           'open', steps)
if ARGV[15] ~= '' then
  redis.call('HSET', KEYS[3], 'callback_url', ARGV[15], 'callback_state', 'pending',
             'callback_attempts', 0)
end
return {'ok', rate.used, rate.reset}
