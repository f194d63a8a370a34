--[[
  Reserves a place among an owner's tasks in flight, before the publish.
  Places reserved by submits that never completed (no record once their
  deadline has passed) are given back first.

  Input:
    KEYS[1]  the owner's in-flight set   errand:inflight:<owner>

    ARGV[1]  the cap: places an owner may hold
    ARGV[2]  task id
    ARGV[3]  deadline, µs since the epoch (the reservation's score until create.lua)
    ARGV[4]  the record key prefix       errand:task:

  Output:
    1  reserved
    0  every place is taken: nothing changed
]]
local t = redis.call('TIME')
local now = t[1] * 1000000 + t[2]
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do
  if redis.call('EXISTS', ARGV[4] .. id) == 0 then redis.call('ZREM', KEYS[1], id) end
end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
return 1
