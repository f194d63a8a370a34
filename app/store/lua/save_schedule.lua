--[[
  Writes a schedule: its record, its indexes and the celery-redbeat entry that
  beat reads, together.

  Input:
    KEYS[1]  the schedule's record          errand:schedule:<id>
    KEYS[2]  every schedule                 errand:schedules
    KEYS[3]  the owner's schedules, or ''   errand:schedules:owner:<key id>
    KEYS[4]  the redbeat entry              errand:redbeat:schedule:<id>
    KEYS[5]  redbeat's due set              errand:redbeat::schedule

    ARGV[1]  mode: create (a new id, counted against the cap), update (an
             existing schedule only) or put (either; a schedules file's)
    ARGV[2]  created, µs since the epoch (the indexes' score)
    ARGV[3]  the cap: schedules the owner may hold (create; 0 for none)
    ARGV[4]  the redbeat entry's definition (JSON)
    ARGV[5]  the redbeat entry's meta (JSON: when it last ran), or '' to keep it
    ARGV[6]  the next run, seconds since the epoch, or '' (paused: out of the due set)
    ARGV[7]  the record's fields, a JSON object; a false value removes that field
    ARGV[8]  the schedule's id

  Output:
    1   written
    0   create: the owner has as many schedules as the cap allows; nothing changed
    -1  create: the id exists; update: there is no such schedule; nothing changed
]]
local mode = ARGV[1]
local exists = redis.call('EXISTS', KEYS[1]) == 1
if mode == 'create' then
  if exists then return -1 end
  local cap = tonumber(ARGV[3])
  if KEYS[3] ~= '' and cap > 0 and redis.call('ZCARD', KEYS[3]) >= cap then return 0 end
elseif mode == 'update' and not exists then
  return -1
end
for field, value in pairs(cjson.decode(ARGV[7])) do
  if value == false then
    redis.call('HDEL', KEYS[1], field)
  else
    redis.call('HSET', KEYS[1], field, tostring(value))
  end
end
if not exists then
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[8])
  if KEYS[3] ~= '' then
    redis.call('ZADD', KEYS[3], ARGV[2], ARGV[8])
  end
end
redis.call('HSET', KEYS[4], 'definition', ARGV[4])
if ARGV[5] ~= '' then redis.call('HSET', KEYS[4], 'meta', ARGV[5]) end
if ARGV[6] == '' then
  redis.call('ZREM', KEYS[5], KEYS[4])
else
  redis.call('ZADD', KEYS[5], ARGV[6], KEYS[4])
end
return 1
