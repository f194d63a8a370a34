"""The workflow resource, from a workflow's record and its steps' records.

Apart from ``app.jobs.workflows`` so that a worker (``app.worker.webhooks``) can build
what ``GET /api/v1/workflows/<id>`` answers without the service, Celery's canvas and all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from app.jobs.resource import FINAL_STATES, callback, state_of
from app.store import records


def aggregate(record: Mapping[str, str], states: Sequence[str]) -> str:
    """The workflow's state from its steps' states (and a cancel kept in its record)."""
    if states and all(state == "SUCCESS" for state in states):
        return "SUCCESS"
    if "FAILURE" in states:
        return "FAILURE"
    if "cancelled_at" in record or "REVOKED" in states:  # or a step cancelled on its own
        return "REVOKED"
    if all(state == "PENDING" for state in states):
        return "PENDING"
    return "PROGRESS" if "PROGRESS" in states else "STARTED"


def resource(
    workflow_id: str, record: Mapping[str, str], steps: Sequence[tuple[str, records.Found | None]]
) -> dict[str, Any]:
    """The workflow resource: what ``GET /api/v1/workflows/<id>`` answers."""
    tasks, states, results = [], [], []
    for task_id, found in steps:
        task_record, meta = found if found is not None else ({}, None)
        state = state_of(task_record, meta) if found is not None else "REVOKED"
        states.append(state)
        results.append(meta.get("result") if meta and state == "SUCCESS" else None)
        tasks.append(
            {
                "id": task_id,
                "task": task_record.get("task"),
                "state": state,
                "links": {"self": f"/api/v1/tasks/{task_id}"},
            }
        )
    state = aggregate(record, states)
    done = sum(1 for s in states if s in FINAL_STATES)
    total = len(states)
    result = None
    if state == "SUCCESS":  # a chain's last result, a group's final step's, or every result
        plain_group = record.get("kind") == "group" and not record.get("then")
        result = results if plain_group else results[-1]
    return {
        "id": workflow_id,
        "kind": record.get("kind"),
        "state": state,
        "progress": {
            "current": done,
            "total": total,
            "percent": round(100.0 * done / total, 1) if total else None,
            "message": f"{done} of {total} steps finished",
        },
        "tasks": tasks,
        "result": result,
        "created_at": record.get("created_at"),
        "cancelled_at": record.get("cancelled_at"),
        "links": {"self": f"/api/v1/workflows/{workflow_id}"},
        "callback": callback(dict(record)),
    }
