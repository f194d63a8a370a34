"""Celery's Redis result backend, made to keep Errand's task records in step.

Configured as ``app.worker.results:ResultStore+redis://...`` (see ``config.py``).
Every state is stored by one script (``store_result.lua``) that also updates
the task's record, the in-flight set and the metrics, and says when a task's
(or its workflow's) webhook is due (``app.worker.webhooks``); Celery's own backend
first GETs the stored state to keep a SUCCESS from being overwritten, a round
trip the script saves.
"""

from __future__ import annotations

import time
from typing import Any

from celery import states
from celery.backends.redis import RedisBackend, SentinelBackend
from celery.exceptions import BackendStoreError
from kombu.utils.encoding import bytes_to_str

from app.clock import isotime
from app.metrics import runtime_bucket
from app.store import keys, records, scripts
from app.tasks.registry import Cancelled
from app.worker.webhooks import queue_delivery

# When each task began to run in this worker process (``app.worker.begin``), so
# that its run time is counted with the state that ends the run.
run_started: dict[str, float] = {}

PROGRESS = "PROGRESS"  # app.tasks.registry.report_progress's state
_RUN_ENDS = frozenset({states.SUCCESS, states.FAILURE, states.RETRY})
NOT_RUN = "not run: an earlier step of its workflow failed or was cancelled"


class ResultStore(RedisBackend):
    """Celery's Redis backend that also closes Errand's task records."""

    def on_task_call(self, producer: Any, task_id: str) -> None:
        # Celery subscribes the sending process to every task's result channel,
        # for a ``.get()`` that Errand's API never makes: skip that round trip
        # and the subscriptions that would pile up in each gunicorn worker.
        return None

    def add_pending_result(
        self, result: Any, weak: bool = False, start_drainer: bool = True
    ) -> Any:
        # For the same reason: publishing a group or a chord makes a GroupResult
        # that waits for each member, subscribing the publishing process to every
        # member's channel. No Errand process waits for a result (no .get(), no
        # .then()), so none subscribes.
        return result

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
        args += [keys.IN_FLIGHT_PREFIX, bucket, seconds, keys.BY_STATE_PREFIX, keys.WORKFLOW_PREFIX]
        names = [keys.result(task_id), keys.record(task_id), keys.STATE_COUNTS, keys.RUNTIMES]
        stored = self.ensure(scripts.STORE_RESULT, (self.client, names, *args))
        if stored == 2:  # the task's first final state, and it has a callback_url
            queue_delivery(self.app, task_id)
        elif stored == 3:  # the task closed its workflow, which has a callback_url
            workflow = self.ensure(self.client.hget, (keys.record(task_id), "workflow"))
            if workflow:
                queue_delivery(self.app, bytes_to_str(workflow), "workflow")
        elif stored == 4 and state == PROGRESS:
            raise Cancelled(f"task {task_id} was cancelled")  # out of report_progress
        return result

    def _fail_chain(self, chain: Any, exc: Any, traceback: Any = None, **kwargs: Any) -> None:
        # Celery stores the failed step's error as the FAILURE of every step chained
        # after it, though none of them ran: Errand says what happened to them
        # instead, REVOKED, with the cancel kept in each record so none can start.
        rest = []
        for step in chain if isinstance(chain, list | tuple) else ():
            options = step.get("options", {}) if isinstance(step, dict) else {}
            if options.get("task_id") and "chord" not in options and "chain" not in options:
                self.not_run(options["task_id"])
            else:
                rest.append(step)  # a canvas Errand's workflows do not make: Celery's way
        if rest:
            super()._fail_chain(rest, exc, traceback, **kwargs)

    def chord_error_from_stack(self, callback: Any, exc: Any = None) -> Any:
        # A group's final step does not run when a step of the group failed or
        # was cancelled; Celery would store a FAILURE for it (a ChordError).
        task_id = callback.get("options", {}).get("task_id") if isinstance(callback, dict) else None
        if task_id and callback.get("subtask_type") is None:
            self.not_run(task_id)
            return None
        return super().chord_error_from_stack(callback, exc)

    def mark_as_revoked(
        self,
        task_id: str,
        reason: str = "",
        request: Any = None,
        store_result: bool = True,
        state: str = states.REVOKED,
    ) -> None:
        super().mark_as_revoked(task_id, reason, request, store_result, state)
        # A step cancelled (or stopped) in a chain: the steps after it will not run either.
        if request is not None and getattr(request, "chain", None):
            self._fail_chain(request.chain, None)

    def not_run(self, task_id: str) -> None:
        """A workflow step that will never run: its cancel kept, its state REVOKED."""
        self.ensure(records.revoke, (self.client, task_id))
        self.mark_as_revoked(task_id, NOT_RUN)


class SentinelResultStore(ResultStore, SentinelBackend):
    """``ResultStore`` on the primary that Redis Sentinel names (a ``sentinel://`` URL)."""
