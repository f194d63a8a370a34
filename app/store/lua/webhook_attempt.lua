--[[
  Starts one attempt to deliver a task's (or a workflow's) webhook, at most once at a time and
  never twice for the same attempt: a duplicate delivery message (a redelivery,
  a trigger seen twice) finds the count moved on and is dropped. The attempt
  holds a lock that expires by itself, so that an attempt whose worker died
  mid-send is taken over by the redelivered message, without counting again.

  Input:
    KEYS[1]  the record                  errand:task:<id> or errand:workflow:<id>
    KEYS[2]  the attempt's lock          errand:webhook:<id> or errand:webhook:workflow:<id>

    ARGV[1]  the attempts made before this one, as the delivery message says
    ARGV[2]  the lock's lifetime, ms (longer than one attempt can take)

  Output:
    n   the attempt may go ahead: it is attempt n (the record says 'delivering')
    0   nothing to do: no record, no callback, already delivered or failed, another
        attempt holds the lock, or a stale duplicate
]]
local url, state, attempts = unpack(redis.call(
  'HMGET', KEYS[1], 'callback_url', 'callback_state', 'callback_attempts'))
if not url or state == 'delivered' or state == 'failed' then return 0 end
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local made, before = tonumber(attempts or '0'), tonumber(ARGV[1])
local this
if made == before then
  this = made + 1
elseif made == before + 1 and state == 'delivering' then
  this = made  -- its worker died mid-attempt: try that attempt again
else
  return 0
end
redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
redis.call('HSET', KEYS[1], 'callback_state', 'delivering', 'callback_attempts', this)
return this
