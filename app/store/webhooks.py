"""A webhook's delivery, kept in its task's or workflow's record (``callback_*`` fields).

``submit_fields`` are written with the record at submit (``Jobs.submit(fields=...)``,
``create_workflow.lua``); ``store_result.lua`` says when a final state is first stored
for a task that has a callback, or when a workflow that has one closes; each attempt
starts with ``webhook_attempt.lua`` and ends with ``finish``. ``kind`` says which
record: ``task`` (``errand:task:<id>``) or ``workflow`` (``errand:workflow:<id>``).
"""

from __future__ import annotations

import redis

from app.store import keys, scripts

# The record fields a status read returns for the task resource's ``callback``.
FIELDS = (
    "callback_url",
    "callback_state",
    "callback_attempts",
    "callback_status",
    "callback_error",
    "callback_delivered_at",
)


def submit_fields(url: str) -> dict[str, str]:
    """The record fields of a submit with a ``callback_url``."""
    return {"callback_url": url, "callback_state": "pending", "callback_attempts": "0"}


def _names(kind: str, subject_id: str) -> list[str]:
    if kind == "workflow":
        return [keys.workflow(subject_id), keys.workflow_webhook_lock(subject_id)]
    return [keys.record(subject_id), keys.webhook_lock(subject_id)]


def start_attempt(
    client: redis.Redis, task_id: str, made: int, lock_ms: int, kind: str = "task"
) -> int:
    """Start the attempt after ``made`` ones: its number, or 0 when there is nothing to do."""
    return int(scripts.WEBHOOK_ATTEMPT(client, _names(kind, task_id), made, lock_ms))


def finish(
    client: redis.Redis,
    task_id: str,
    state: str,
    status: int | None,
    error: str | None,
    delivered_at: str | None = None,
    kind: str = "task",
) -> None:
    """Keep how an attempt ended (``state``: pending, delivered or failed) and free its lock.

    Only an existing record is written: one that expired meanwhile is not made again.
    """
    fields = [
        *("callback_state", state),
        *("callback_status", "" if status is None else str(status)),
        *("callback_error", error or ""),
    ]
    if delivered_at:
        fields += ["callback_delivered_at", delivered_at]
    scripts.WEBHOOK_FINISH(client, _names(kind, task_id), *fields)
