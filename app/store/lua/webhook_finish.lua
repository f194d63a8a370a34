--[[
  Keeps how an attempt to deliver a task's (or a workflow's) webhook ended, and frees its lock.
  A record that expired meanwhile is not made again.

  Input:
    KEYS[1]    the record               errand:task:<id> or errand:workflow:<id>
    KEYS[2]    the attempt's lock       errand:webhook:<id> or errand:webhook:workflow:<id>

    ARGV[1..]  the callback_* fields to set, as name, value pairs

  Output:
    1  kept
    0  no such record
]]
redis.call('DEL', KEYS[2])
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
