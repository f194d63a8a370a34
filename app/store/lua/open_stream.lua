--[[
  Takes one of a key's places for open waits (long-polls and event streams),
  first giving back the places of waits whose lease ran out (a process that
  died while a client waited).

  Input:
    KEYS[1]  the key's open waits    errand:streams:<owner>
    ARGV[1]  places the key may hold
    ARGV[2]  this wait's id
    ARGV[3]  seconds its lease lasts (renewed while it waits, removed when it ends)

  Output:
    1  taken
    0  every place is taken: nothing changed
]]
local t = redis.call('TIME')
local now = tonumber(t[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
