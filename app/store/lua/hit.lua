--[[
  Counts one request in a key's fixed rate window (it starts with the first
  request and lasts the window), unless the window is spent.

  Input:
    KEYS[1]  the rate window    errand:limits:<name>:<owner>
    ARGV[1]  requests the window allows
    ARGV[2]  the window, seconds

  Output:
    {1, used, reset}  counted; reset: seconds until the window ends
    {0, used, reset}  the window is spent: not counted
]]
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if used >= tonumber(ARGV[1]) then return {0, used, redis.call('TTL', KEYS[1])} end
used = redis.call('INCR', KEYS[1])
if used == 1 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return {1, used, redis.call('TTL', KEYS[1])}
