"""Celery's Redis result backend, made to keep Errand's task records in step.

Configured as ``app.worker.results:ResultStore+redis://...`` (see ``config.py``).
Every state is stored by one script (``store_result.lua``) that also updates
the task's record, the in-flight set and the metrics; Celery's own backend
first GETs the stored state to keep a SUCCESS from being overwritten, a round
trip the script saves.
"""

from __future__ import annotations

import time
from typing import Any

from celery import states
from celery.backends.redis import RedisBackend
from celery.exceptions import BackendStoreError
from kombu.utils.encoding import bytes_to_str

from app.clock import isotime
from app.metrics import runtime_bucket
from app.store import keys, scripts
from app.tasks.registry import Cancelled

# When each task began to run in this worker process (``app.worker.begin``), so
# that its run time is counted with the state that ends the run.
run_started: dict[str, float] = {}

PROGRESS = "PROGRESS"  # app.tasks.registry.report_progress's state
_RUN_ENDS = frozenset({states.SUCCESS, states.FAILURE, states.RETRY})


class ResultStore(RedisBackend):
    """Celery's Redis backend that also closes Errand's task records."""

    def on_task_call(self, producer: Any, task_id: str) -> None:
        # Celery subscribes the sending process to every task's result channel,
        # for a ``.get()`` that Errand's API never makes: skip that round trip
        # and the subscriptions that would pile up in each gunicorn worker.
        return None

    def _store_result(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: Any = None,
        request: Any = None,
        **kwargs: Any,
    ) -> Any:
        task_id = bytes_to_str(task_id)
        meta = self._get_result_meta(
            result=result, state=state, traceback=traceback, request=request
        )
        meta["task_id"] = task_id
        value = self.encode(meta)
        if isinstance(value, str) and len(value) > self._MAX_STR_VALUE_SIZE:
            raise BackendStoreError(
                "value too large for Redis backend", state=state, task_id=task_id
            )
        bucket, seconds = "", 0.0
        began = run_started.pop(task_id, None) if state in _RUN_ENDS else None
        if began is not None:
            seconds = time.monotonic() - began
            bucket = runtime_bucket(seconds)
        expires = self.failure_expires if state == states.FAILURE else self.expires
        final = "final" if state in states.READY_STATES else ""
        args = [value, int(expires or 0), state, isotime(), int(self.expires or 0), final, task_id]
        args += [keys.IN_FLIGHT_PREFIX, bucket, seconds, keys.BY_STATE_PREFIX]
        names = [keys.result(task_id), keys.record(task_id), keys.STATE_COUNTS, keys.RUNTIMES]
        stored = self.ensure(scripts.STORE_RESULT, (self.client, names, *args))
        if stored == 2 and state == PROGRESS:
            raise Cancelled(f"task {task_id} was cancelled")  # out of report_progress
        return result
