--[[
  Writes a new task record and indexes it, but only while Redis's own clock is
  before the submit's deadline: a write that a hung Redis applies late, after
  the API has already answered 503, changes nothing. The worker reads the same
  clock to tell a record still on its way from one that will never come
  (begin.lua). A retry also links the record it retries to the new one. The
  owner's in-flight place, reserved before the publish (reserve.lua), is kept
  for good (score +inf) until the task is final (store_result.lua).

  Input:
    KEYS[1]    the new record               errand:task:<id>
    KEYS[2]    the record retried, or ''    errand:task:<old id>
    KEYS[3]    the owner's in-flight set    errand:inflight:<owner>
    KEYS[4..]  the indexes to add the id to (all, per type, per owner)

    ARGV[1]    deadline, µs since the epoch on Redis's clock
    ARGV[2]    task type
    ARGV[3]    created_at (ISO 8601)
    ARGV[4]    created, µs since the epoch (the index score)
    ARGV[5]    task id
    ARGV[6]    the by-state index prefix   errand:bystate:
    ARGV[7..]  more record fields, as name, value pairs

  Output:
    1  written
    0  past the deadline: nothing written
]]
--- @include "set_state"

local t = redis.call('TIME')
if t[1] * 1000000 + t[2] > tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'task', ARGV[2], 'created_at', ARGV[3],
           'created_us', ARGV[4], 'retries', 0, unpack(ARGV, 7))
set_state(KEYS[1], 'PENDING', ARGV[5], ARGV[6])
for i = 4, #KEYS do redis.call('ZADD', KEYS[i], ARGV[4], ARGV[5]) end
if KEYS[2] ~= '' then redis.call('HSET', KEYS[2], 'retried_by', ARGV[5]) end
redis.call('ZADD', KEYS[3], 'XX', 'inf', ARGV[5])
return 1
