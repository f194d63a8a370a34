--[[
  Gives up an Idempotency-Key after a failed submit, unless another submit
  holds it now.

  Input:
    KEYS[1]  the key    errand:idem:<sha256>
    ARGV[1]  the task id of the submit that failed

  Output:
    0
]]
local current = redis.call('GET', KEYS[1])
if current and string.find(current, '|' .. ARGV[1] .. '|', 1, true) then
  redis.call('DEL', KEYS[1])
end
return 0
