--[[
  A whole submit on a Redis broker, in one round trip: count the key's rate
  window, claim the Idempotency-Key, take a place in flight, write the record
  and its indexes, and push the Celery message onto its queue. All of it, or
  nothing: a refused submit changes nothing and says which limit refused.

  Redis's own clock must be before the submit's deadline: a script that a hung
  Redis runs late, after the API has already answered 503, changes nothing.

  Input:
    KEYS[1]    the rate window, or ''         errand:limits:submit:<owner>
    KEYS[2]    the owner's in-flight set, or ''   errand:inflight:<owner>
    KEYS[3]    the Idempotency-Key, or ''     errand:idem:<sha256>
    KEYS[4]    the new record                 errand:task:<id>
    KEYS[5]    the record retried, or ''      errand:task:<old id>
    KEYS[6]    the queue's list for this priority   celery, celery\x06\x163, ...
    KEYS[7]    the queue's ready marker       errand:ready:celery (take.lua)
    KEYS[8..]  the indexes to add the id to (all, per type, per owner)

    ARGV[1]    deadline, µs since the epoch on Redis's clock
    ARGV[2]    requests the rate window allows (0: no limit)
    ARGV[3]    the window, seconds
    ARGV[4]    places in flight the owner may hold
    ARGV[5]    the request's fingerprint (for the Idempotency-Key)
    ARGV[6]    seconds to keep the Idempotency-Key
    ARGV[7]    the record key prefix          errand:task:
    ARGV[8]    task id
    ARGV[9]    created, µs since the epoch (the index score)
    ARGV[10]   the Celery message (kombu's JSON envelope)
    ARGV[11]   the by-state index prefix      errand:bystate:
    ARGV[12..] the record's fields, as name, value pairs

  Output:
    {'ok', used, reset}           submitted; used: requests counted in the window,
                                  reset: seconds until the window ends (-1: no limit)
    {'existing', used, reset, id} the Idempotency-Key already made task id
    {'retried', used, reset, id}  the task retried was retried already, by task id
    {'conflict'}                  the Idempotency-Key was used for another request
    {'rate', used, reset}         the rate window is spent
    {'inflight', held}            every place in flight is taken
    {'late'}                      past the deadline
]]
--- @include "set_state"
--- @include "admission"

local t = redis.call('TIME')
if t[1] * 1000000 + t[2] > tonumber(ARGV[1]) then return {'late'} end
-- The same script sent again (a client retrying after a timeout): done already.
if redis.call('EXISTS', KEYS[4]) == 1 then
  return {'ok', tonumber(redis.call('GET', KEYS[1]) or '0'), redis.call('TTL', KEYS[1])}
end

local refused = refusal(KEYS[1], ARGV[2], ARGV[3], KEYS[3], ARGV[5], ARGV[7])
if refused then return refused end

if KEYS[5] ~= '' then
  local again = redis.call('HGET', KEYS[5], 'retried_by')
  if again then
    count()
    return {'retried', rate.used, rate.reset, again}
  end
end

if KEYS[2] ~= '' then
  local held = redis.call('ZCARD', KEYS[2])
  if held >= tonumber(ARGV[4]) then return {'inflight', held} end
end

count()
if KEYS[3] ~= '' then
  redis.call('SET', KEYS[3], ARGV[5] .. '|' .. ARGV[8] .. '|0', 'EX', ARGV[6])
end
redis.call('HSET', KEYS[4], unpack(ARGV, 12))
set_state(KEYS[4], 'PENDING', ARGV[8], ARGV[11])
for i = 8, #KEYS do redis.call('ZADD', KEYS[i], ARGV[9], ARGV[8]) end
if KEYS[5] ~= '' then redis.call('HSET', KEYS[5], 'retried_by', ARGV[8]) end
if KEYS[2] ~= '' then redis.call('ZADD', KEYS[2], 'inf', ARGV[8]) end
redis.call('LPUSH', KEYS[6], ARGV[10])
redis.call('ZADD', KEYS[7], 0, 'ready')
redis.call('EXPIRE', KEYS[7], 10)  -- a marker nobody waits on goes
return {'ok', rate.used, rate.reset}
