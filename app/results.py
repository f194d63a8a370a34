"""Celery's Redis result backend, made to keep Errand's task records in step.

Configured as ``app.results:ResultStore+redis://...`` (see ``config.py``).
"""

from __future__ import annotations

from typing import Any

from celery import states
from celery.backends.redis import RedisBackend

from app.records import RECORD_PREFIX, STATE_COUNTS, isotime, run_script

# One round trip stores a state and updates the record it belongs to: a final
# state closes the record and gives it the result's lifetime, a retry counts,
# and every state but PROGRESS counts in the metrics (per task type).
# A record that does not exist (an id this API never issued) is not created.
_STORE = """
local ttl = tonumber(ARGV[2])
if ttl > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ttl)
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
local task = redis.call('HGET', KEYS[2], 'task')
if task then
  if ARGV[3] ~= 'PROGRESS' then redis.call('HINCRBY', KEYS[3], task .. '|' .. ARGV[3], 1) end
  if ARGV[3] == 'RETRY' then
    redis.call('HINCRBY', KEYS[2], 'retries', 1)
  elseif ARGV[6] == 'final' then
    local owner = redis.call('HGET', KEYS[2], 'owner')
    if owner then redis.call('ZREM', 'errand:inflight:' .. owner, ARGV[7]) end
    redis.call('HSETNX', KEYS[2], 'finished_at', ARGV[4])
    if tonumber(ARGV[5]) > 0 then redis.call('EXPIRE', KEYS[2], ARGV[5]) end
  end
end
return 1
"""


class ResultStore(RedisBackend):
    """Celery's Redis backend that also closes Errand's task records."""

    def on_task_call(self, producer: Any, task_id: str) -> None:
        # Celery subscribes the sending process to every task's result channel,
        # for a ``.get()`` that Errand's API never makes: skip that round trip
        # and the subscriptions that would pile up in each gunicorn worker.
        return None

    def _set_with_state(self, key: str | bytes, value: str | bytes, state: str) -> Any:
        key = key.decode() if isinstance(key, bytes) else key
        prefix = self.task_keyprefix
        prefix = prefix.decode() if isinstance(prefix, bytes) else prefix
        too_large = isinstance(value, str) and len(value) > self._MAX_STR_VALUE_SIZE
        if not key.startswith(prefix) or too_large:
            return super()._set_with_state(key, value, state)
        task_id = key[len(prefix) :]
        expires = self.failure_expires if state == states.FAILURE else self.expires
        return self.ensure(self._store, (key, task_id, value, expires or 0, state))

    def _store(self, key: str, task_id: str, value: str, expires: float, state: str) -> Any:
        final = "final" if state in states.READY_STATES else ""
        args = [value, int(expires), state, isotime(), int(self.expires or 0), final, task_id]
        keys = [key, RECORD_PREFIX + task_id, STATE_COUNTS]
        return run_script(self.client, _STORE, keys, *args)
