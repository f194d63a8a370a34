--[[
  What submit.lua and create_workflow.lua both check before they write: the
  key's fixed rate window and its Idempotency-Key.

  rate_spent(key, limit, seconds): whether the window (at most `limit` requests
    per `seconds`; limit 0: no limit, key '') is spent; rate.used and
    rate.reset (its TTL) say where it stands.
  count(): count this request in the window (once), updating rate.used and
    rate.reset (-1: no limit).
  made_by_key(key, fingerprint, prefix): what the Idempotency-Key `key` ('':
    none) already made: nil (nothing, or what it made is gone), 'conflict'
    (another request's key), or the id it made (which exists under `prefix`).
  refusal(rate_key, limit, seconds, key, fingerprint, prefix): both checks, in
    that order: the script's answer when one of them ends the request ('rate',
    'conflict', or 'existing' counted in the window), else nil.
]]
local rate = {used = 0, reset = -1}

local function rate_spent(key, limit, seconds)
  rate.key, rate.limit, rate.seconds = key, tonumber(limit), seconds
  if rate.limit == 0 then return false end
  rate.used = tonumber(redis.call('GET', key) or '0')
  if rate.used < rate.limit then return false end
  rate.reset = redis.call('TTL', key)
  return true
end

local function count()
  if rate.limit == 0 then return end
  rate.used = redis.call('INCR', rate.key)
  if rate.used == 1 then redis.call('EXPIRE', rate.key, rate.seconds) end
  rate.reset = redis.call('TTL', rate.key)
end

local function made_by_key(key, fingerprint, prefix)
  if key == '' then return nil end
  local current = redis.call('GET', key)
  if not current then return nil end
  local fp, id = string.match(current, '^([^|]*)|([^|]*)')
  if redis.call('EXISTS', prefix .. id) == 0 then return nil end
  if fp ~= fingerprint then return 'conflict' end
  return id
end

local function refusal(rate_key, limit, seconds, key, fingerprint, prefix)
  if rate_spent(rate_key, limit, seconds) then return {'rate', rate.used, rate.reset} end
  local made = made_by_key(key, fingerprint, prefix)
  if made == 'conflict' then return {'conflict'} end
  if made then
    count()
    return {'existing', rate.used, rate.reset, made}
  end
  return nil
end
