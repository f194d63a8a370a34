--[[
  set_state(record, state, task_id, prefix): keep the record's state and the
  by-state indexes in step. The record holds the state it is listed under;
  a task is in errand:bystate:<state> and errand:bystate:owner:<owner>:<state>,
  scored by creation time like the other indexes.
]]
local function set_state(record, state, task_id, prefix)
  local old, owner, score = unpack(redis.call('HMGET', record, 'state', 'owner', 'created_us'))
  if old == state or not score then return end
  if old then
    redis.call('ZREM', prefix .. old, task_id)
    if owner and owner ~= '' then redis.call('ZREM', prefix .. 'owner:' .. owner .. ':' .. old, task_id) end
  end
  redis.call('HSET', record, 'state', state)
  redis.call('ZADD', prefix .. state, score, task_id)
  if owner and owner ~= '' then
    redis.call('ZADD', prefix .. 'owner:' .. owner .. ':' .. state, score, task_id)
  end
end
