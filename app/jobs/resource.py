"""The task resource of the HTTP contract, made from a record and Celery's result."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Any

from app.clock import isotime

FINAL_STATES = frozenset({"SUCCESS", "FAILURE", "REVOKED"})
STATES = frozenset({"PENDING", "STARTED", "PROGRESS", "RETRY"}) | FINAL_STATES
SHOWS_LAST_PROGRESS = frozenset({"RETRY"}) | FINAL_STATES


def state_of(record: dict[str, str], meta: dict[str, Any] | None) -> str:
    """The task's state: Celery's, except that a kept cancel outranks a non-final one."""
    state = meta["status"] if meta else "PENDING"
    if state not in FINAL_STATES and "revoked_at" in record:
        return "REVOKED"
    return state


def _error(value: Any) -> dict[str, str] | None:
    if not isinstance(value, dict) or "exc_type" not in value:
        return None
    message = value.get("exc_message", "")
    if isinstance(message, list | tuple):
        message = message[0] if len(message) == 1 else ", ".join(map(str, message))
    return {"type": str(value["exc_type"]), "message": str(message)}


def _progress(value: Any) -> dict[str, Any] | None:
    if not isinstance(value, dict):
        return None
    current, total = value.get("current", 0), value.get("total", 0)
    percent = round(100.0 * current / total, 1) if total else None
    return {
        "current": current,
        "total": total,
        "percent": percent,
        "message": value.get("message", ""),
    }


def _last_progress(record: dict[str, str], state: str) -> dict[str, Any] | None:
    """The progress last reported, as a run that ended or paused shows it (100 % on SUCCESS)."""
    raw = record.get("progress")
    if not raw:
        return None
    try:
        progress = _progress(json.loads(raw).get("result"))
    except (ValueError, AttributeError):
        return None
    if progress and state == "SUCCESS" and progress["total"]:
        progress.update(current=progress["total"], percent=100.0)
    return progress


def resource(task_id: str, record: dict[str, str], meta: dict[str, Any] | None) -> dict[str, Any]:
    """The task resource: what ``GET /api/v1/tasks/<id>`` answers."""
    state = state_of(record, meta)
    value = meta.get("result") if meta else None
    if state == "PROGRESS":
        progress = _progress(value)
    elif state in SHOWS_LAST_PROGRESS:
        progress = _last_progress(record, state)
    else:
        progress = None
    finished = record.get("finished_at")
    if state in FINAL_STATES and not finished:
        finished = record.get("revoked_at") if state == "REVOKED" else None
        if not finished and meta and meta.get("date_done"):
            finished = isotime(datetime.fromisoformat(meta["date_done"]))
    return {
        "id": task_id,
        "task": record.get("task"),
        "state": state,
        "progress": progress,
        "result": value if state == "SUCCESS" else None,
        "error": _error(value) if state in {"FAILURE", "RETRY"} else None,
        "retries": int(record.get("retries", 0)),
        "created_at": record.get("created_at"),
        "eta": record.get("eta"),
        "started_at": record.get("started_at"),
        "finished_at": finished if state in FINAL_STATES else None,
        "links": _links(task_id, record),
        "callback": callback(record),
    }


def summary(task_id: str, record: dict[str, str]) -> dict[str, Any]:
    """A task as listings show it: from its record alone (no result or error)."""
    state = record.get("state", "PENDING")
    if state not in FINAL_STATES and "revoked_at" in record:
        state = "REVOKED"
    final = state in FINAL_STATES
    shows = state == "PROGRESS" or state in SHOWS_LAST_PROGRESS
    return {
        "id": task_id,
        "task": record.get("task"),
        "state": state,
        "progress": _last_progress(record, state) if shows else None,
        "retries": int(record.get("retries", 0)),
        "created_at": record.get("created_at"),
        "eta": record.get("eta"),
        "started_at": record.get("started_at"),
        "finished_at": (record.get("finished_at") or record.get("revoked_at")) if final else None,
        "links": _links(task_id, record),
        "callback": callback(record),
    }


def callback(record: dict[str, str]) -> dict[str, Any] | None:
    """Where the task's webhook stands (``app.worker.webhooks``); None without a callback_url."""
    url = record.get("callback_url")
    if not url:
        return None
    status = record.get("callback_status")
    return {
        "url": url,
        "state": record.get("callback_state", "pending"),
        "attempts": int(record.get("callback_attempts", 0)),
        "last_status": int(status) if status else None,
        "last_error": record.get("callback_error") or None,
        "delivered_at": record.get("callback_delivered_at") or None,
    }


def _links(task_id: str, record: dict[str, str]) -> dict[str, str]:
    links = {"self": f"/api/v1/tasks/{task_id}"}
    for name in ("retry_of", "retried_by"):
        if record.get(name):
            links[name] = f"/api/v1/tasks/{record[name]}"
    # A run of a schedule, a step of a workflow: the record names its parent.
    for name, path in (("schedule", "schedules"), ("workflow", "workflows")):
        if record.get(name):
            links[name] = f"/api/v1/{path}/{record[name]}"
    return links


def encode_cursor(score: int, task_id: str) -> str:
    """An opaque cursor that resumes a listing after (score, id)."""
    return base64.urlsafe_b64encode(f"{score}:{task_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    """Undo ``encode_cursor``; ValueError for anything it did not make."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        score, task_id = raw.split(":", 1)
        if not task_id or len(task_id) > 64:
            raise ValueError(cursor)
        return int(score), task_id
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise ValueError(cursor) from exc
