--[[
  Keeps a cancel in the task's record, so that it holds across worker
  restarts (begin.lua reads it).

  Input:
    KEYS[1]  the record    errand:task:<id>
    ARGV[1]  revoked_at (ISO 8601); an earlier cancel's time is kept

  Output:
    1  kept
    0  no such record
]]
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSETNX', KEYS[1], 'revoked_at', ARGV[1])
return 1
