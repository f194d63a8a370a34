"""Celery's Redis result backend, made to keep Errand's task records in step.

Configured as ``app.worker.results:ResultStore+redis://...`` (see ``config.py``).
"""

from __future__ import annotations

from typing import Any

from celery import states
from celery.backends.redis import RedisBackend

from app.clock import isotime
from app.store import keys, scripts


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
        args.append(keys.IN_FLIGHT_PREFIX)
        names = [key, keys.record(task_id), keys.STATE_COUNTS]
        return scripts.STORE_RESULT(self.client, names, *args)
