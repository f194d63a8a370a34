--[[
  Undoes create_workflow.lua after its publish failed: the workflow's record
  and every step's record, index entries and in-flight place are removed. A
  message that reached the broker anyway then finds no record, and the worker
  drops it (begin.lua answers 'orphan').

  Input:
    KEYS[1]    the workflow's record             errand:workflow:<id>
    KEYS[2]    the owner's in-flight set, or ''  errand:inflight:<owner>
    KEYS[3]    the index of every task           errand:index
    KEYS[4]    the owner's index, or ''          errand:index:owner:<owner>
    KEYS[5..]  three per step, as in create_workflow.lua

    ARGV[1]    the by-state index prefix         errand:bystate:
    ARGV[2..]  the steps' task ids, in order

  Output:
    the number of step records removed
]]
local removed = 0
for i = 2, #ARGV do
  local id = ARGV[i]
  local k = 5 + (i - 2) * 3
  local state, owner = unpack(redis.call('HMGET', KEYS[k], 'state', 'owner'))
  if state then
    redis.call('ZREM', ARGV[1] .. state, id)
    if owner and owner ~= '' then redis.call('ZREM', ARGV[1] .. 'owner:' .. owner .. ':' .. state, id) end
  end
  removed = removed + redis.call('DEL', KEYS[k])
  redis.call('ZREM', KEYS[3], id)
  redis.call('ZREM', KEYS[k + 1], id)
  if KEYS[4] ~= '' then redis.call('ZREM', KEYS[4], id) end
  if KEYS[k + 2] ~= '' then redis.call('ZREM', KEYS[k + 2], id) end
  if KEYS[2] ~= '' then redis.call('ZREM', KEYS[2], id) end
end
redis.call('DEL', KEYS[1])
return removed
