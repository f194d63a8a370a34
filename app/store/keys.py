"""Every Redis key Errand reads or writes, named in one place.

``docs/architecture.md`` has the table of keys, their types, and which script or
module writes each.
"""

from __future__ import annotations

RECORD_PREFIX = "errand:task:"
WORKFLOW_PREFIX = "errand:workflow:"
INDEX = "errand:index"
BY_STATE_PREFIX = "errand:bystate:"
IN_FLIGHT_PREFIX = "errand:inflight:"
IDEMPOTENCY_PREFIX = "errand:idem:"
APIKEY_PREFIX = "errand:apikey:"
APIKEY_IDS = "errand:apikeys"
WORKERS = "errand:workers"
STATE_COUNTS = "errand:metrics:states"  # "<task>|<state>" -> times reached
RUNTIMES = "errand:metrics:runtime"  # "<task>|<bucket>", "<task>|sum", "<task>|count"
LIMITS_PREFIX = "errand:limits"
READY_PREFIX = "errand:ready:"
REPLICATION_MARK = "errand:replicated"  # a write that WAIT follows (scripts.confirm)
RESULT_PREFIX = "celery-task-meta-"  # Celery's Redis result backend names results so


def ready(queue: str) -> str:
    """A queue's ready marker: set by every push, waited on by idle workers (``take.lua``)."""
    return READY_PREFIX + queue


def record(task_id: str) -> str:
    """A task's record."""
    return RECORD_PREFIX + task_id


def workflow(workflow_id: str) -> str:
    """A workflow's record: its kind, owner and steps (``app.store.workflows``)."""
    return WORKFLOW_PREFIX + workflow_id


def result(task_id: str) -> str:
    """Celery's stored result of a task."""
    return RESULT_PREFIX + task_id


def type_index(task_name: str) -> str:
    """The index of one task type."""
    return f"{INDEX}:{task_name}"


def owner_index(owner: str, task_name: str | None = None) -> str:
    """The index of one owner's tasks (of one type, if given)."""
    return f"{INDEX}:owner:{owner}" + (f":{task_name}" if task_name else "")


def state_index(state: str, owner: str | None = None) -> str:
    """The index of the tasks in one state (of one owner, if given); see ``set_state.lua``."""
    return BY_STATE_PREFIX + (f"owner:{owner}:{state}" if owner else state)


def in_flight(owner: str) -> str:
    """The sorted set of an owner's tasks that are not final yet."""
    return IN_FLIGHT_PREFIX + owner


def idempotency(digest: str) -> str:
    """An Idempotency-Key, by the SHA-256 of its owner and value."""
    return IDEMPOTENCY_PREFIX + digest


def streams(owner: str) -> str:
    """The sorted set of one key's open waits (long-polls and event streams)."""
    return f"errand:streams:{owner}"


def bulk_progress(task_id: str) -> str:
    """Where an ``email.bulk`` job stands: the next recipient and how many were sent."""
    return f"errand:bulk:{task_id}"


def bulk_failed(task_id: str) -> str:
    """The recipients an ``email.bulk`` job could not send to."""
    return f"errand:bulk:{task_id}:failed"


def apikey(key_id: str) -> str:
    """An API key's record."""
    return APIKEY_PREFIX + key_id


def worker(hostname: str) -> str:
    """The description of a live worker."""
    return f"errand:worker:{hostname}"


def webhook_lock(task_id: str) -> str:
    """Held while one attempt to deliver a task's webhook runs (``webhook_attempt.lua``)."""
    return f"errand:webhook:{task_id}"


def workflow_webhook_lock(workflow_id: str) -> str:
    """Held while one attempt to deliver a workflow's webhook runs."""
    return f"errand:webhook:workflow:{workflow_id}"


# Schedules (app.store.schedules) and the celery-redbeat entries beat reads
# (app.worker.schedules sets redbeat_key_prefix to REDBEAT_PREFIX).
SCHEDULE_PREFIX = "errand:schedule:"
SCHEDULES = "errand:schedules"  # every schedule id, scored by creation time (µs)
REDBEAT_PREFIX = "errand:redbeat:"
REDBEAT_DUE = REDBEAT_PREFIX + ":schedule"  # redbeat's name: entries by next run (s)
SCHEDULE_ENTRY = "schedule:"  # the redbeat entry name of a schedule: schedule:<id>


def schedule(schedule_id: str) -> str:
    """A schedule's record."""
    return SCHEDULE_PREFIX + schedule_id


def owner_schedules(owner: str) -> str:
    """The sorted set of one key's schedules."""
    return f"{SCHEDULES}:owner:{owner}"


def redbeat_entry(schedule_id: str) -> str:
    """The celery-redbeat entry (definition and meta) of a schedule."""
    return REDBEAT_PREFIX + SCHEDULE_ENTRY + schedule_id
