--[[
  A worker takes the next message of its queues and holds it, in one step.

  kombu's Redis transport pops a message (BRPOP) and then, in a second command,
  records that this worker holds it (kombu's unacked hash and index, which bring
  it back if the worker dies). Between the two the message is nowhere: a worker
  killed there, or a primary lost there (the pop reached the replica, the hold
  did not), loses it. Here the pop and the hold are one atomic step (as BullMQ's
  moveToActive). Workers wait for work on the queues' ready markers
  (BZPOPMIN), which every push sets; a take that leaves messages behind in
  its list sets that queue's marker again, so that the next idle worker wakes. A marker lasts 10 s: idle
  workers look anyway every second (kombu's brpop_timeout), so an older one
  would wake nobody who needs it, and a queue nobody consumes (a reply queue
  gone) leaves no key behind.

  Input:
    KEYS[1]          kombu's unacked hash          unacked
    KEYS[2]          kombu's unacked index         unacked_index
    KEYS[3..2+n]     the lists to take from, first first   celery, celery\x06\x163, ...
    KEYS[3+n..2+2n]  each list's queue's ready marker       errand:ready:celery

    ARGV[1]          now, seconds since the epoch (the hold's lease starts)
    ARGV[2]          n, how many lists
    ARGV[3..2+n]     each list's queue name        celery
                     ('' when its consumer does not acknowledge, as a reply
                     queue's: taken, not held)

  Output:
    {list, message}  the message taken, now held under its delivery tag
    false            every list is empty
]]

local n = tonumber(ARGV[2])

-- The first list with a message, and the message: one LMPOP (Redis 7), else RPOP each.
local function pop()
  local args = {n}
  for i = 1, n do args[i + 1] = KEYS[2 + i] end
  args[n + 2] = 'RIGHT'
  local popped = redis.pcall('LMPOP', unpack(args))
  if type(popped) == 'table' and popped.err == nil then
    for i = 1, n do
      if KEYS[2 + i] == popped[1] then return i, popped[2][1] end
    end
  elseif type(popped) == 'table' then
    for i = 1, n do
      local message = redis.call('RPOP', KEYS[2 + i])
      if message then return i, message end
    end
  end
  return nil
end

local i, message = pop()
if not i then return false end
-- The tag is in the properties, at the end of kombu's envelope: look there first.
local pattern = '"delivery_tag"%s*:%s*"([^"]+)"'
local tag = string.match(message, pattern, math.max(1, #message - 4096))
  or string.match(message, pattern)
if tag and ARGV[2 + i] ~= '' then
  -- kombu's own form: [payload, exchange, routing key]; '' routes to the queue itself.
  local held = '[' .. message .. ',"",' .. cjson.encode(ARGV[2 + i]) .. ']'
  redis.call('HSET', KEYS[1], tag, held)
  redis.call('ZADD', KEYS[2], ARGV[1], tag)
end
-- More behind it: wake the next idle worker (this one takes again at once).
if redis.call('LLEN', KEYS[2 + i]) > 0 then
  redis.call('ZADD', KEYS[2 + n + i], 0, 'ready')
  redis.call('EXPIRE', KEYS[2 + n + i], 10)
end
return {KEYS[2 + i], message}
