"""The tasks API, version 1: submit, status, cancel, retry, list, task types.

Views parse, call ``app.jobs`` with the caller's principal, and shape the answer.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import orjson
from flask import Blueprint, Response, current_app, g, jsonify, request
from pydantic import ValidationError
from werkzeug.exceptions import UnsupportedMediaType

from app.errors import InvalidBody, TaskNotFound, Unprocessable
from app.jobs import Jobs
from app.jobs.resource import FINAL_STATES, STATES, decode_cursor
from app.schemas import Filters, Submission
from app.tasks.registry import Registry
from app.web.auth import current
from app.web.limits import quota, spent

bp = Blueprint("tasks", __name__, url_prefix="/api/v1")


def jobs() -> Jobs:
    """The current application's job service."""
    service: Jobs = current_app.extensions["errand.jobs"]
    return service


def task_types() -> Registry:
    """The current application's task types."""
    registry: Registry = current_app.extensions["errand.task_types"]
    return registry


def _errors(exc: ValidationError, prefix: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    return [{"loc": [*prefix, *e["loc"]], "msg": e["msg"]} for e in exc.errors()]


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def json_object() -> dict[str, Any]:
    """The request body as a JSON object: 415, 413 and 400 for anything else."""
    if not request.is_json:
        raise UnsupportedMediaType("send the body as application/json")
    raw = request.get_data(cache=False)  # 413 past MAX_CONTENT_LENGTH
    try:
        body = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise InvalidBody(f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidBody("the body must be a JSON object")
    return body


def idempotency_key() -> str | None:
    """The ``Idempotency-Key`` header's value, if sent.

    The header is a Structured Field string (``"..."``) in the IETF draft; a bare
    token is accepted too.
    """
    raw = request.headers.get("Idempotency-Key")
    if raw is None:
        return None
    value = raw[1:-1] if len(raw) >= 2 and raw[0] == raw[-1] == '"' else raw
    if not 1 <= len(value) <= 255 or not value.isprintable() or not value.isascii():
        raise InvalidBody("Idempotency-Key must be 1 to 255 printable ASCII characters")
    return value


def task_id_or_404(task_id: str) -> str:
    """Ids are UUIDs the server made; anything else is unknown without asking Redis."""
    try:
        if str(uuid.UUID(task_id)) == task_id:
            return task_id
    except ValueError:
        pass
    raise TaskNotFound(f"no task {task_id}")


def task_response(task: dict[str, Any], status: int = 200, created: bool = False) -> Response:
    """The task resource; ``created``: a new task, whose address goes in ``Location``."""
    response = Response(orjson.dumps(task), status, mimetype="application/json")
    if task["state"] not in FINAL_STATES:
        response.headers["Retry-After"] = "1"
    if created:
        response.headers["Location"] = task["links"]["self"]
    return response


@bp.post("/tasks")
def submit() -> Response:
    try:
        submission = Submission.model_validate(json_object())
    except ValidationError as exc:
        raise Unprocessable("the submission is not valid", _errors(exc)) from None
    registry = task_types()
    task_type = registry.get(submission.task)
    g.task_type = submission.task if task_type else "unknown"
    if task_type is None:
        raise Unprocessable(
            f"unknown task type {submission.task!r}",
            [{"loc": ["task"], "msg": "not one of " + ", ".join(sorted(registry))}],
        )
    try:
        params = task_type.params.model_validate(submission.params)
    except ValidationError as exc:
        raise Unprocessable(
            f"params are not valid for {task_type.name}", _errors(exc, ("params",))
        ) from None
    options = submission.options.model_dump(exclude_none=True)
    limit = quota("submit")
    task, usage = jobs().submit(
        current(),
        task_type,
        params.model_dump(mode="json"),
        options,
        idempotency_key(),
        g.get("request_id", ""),
        quota=limit,
    )
    if limit is not None:
        spent(limit, usage)
    return task_response(task, 202, created=True)


@bp.post("/tasks/<task_id>/retry")
def retry_task(task_id: str) -> Response:
    task = jobs().resubmit(current(), task_id_or_404(task_id), g.get("request_id", ""))
    return task_response(task, 202, created=True)


@bp.get("/tasks/<task_id>")
def status(task_id: str) -> Response:
    limit = quota("read")
    task, usage = jobs().read(current(), task_id_or_404(task_id), limit)
    if limit is not None:
        spent(limit, usage)
    return task_response(task)


@bp.delete("/tasks/<task_id>")
def cancel(task_id: str) -> Response:
    return task_response(jobs().cancel(current(), task_id_or_404(task_id)), 202)


@bp.get("/tasks")
def list_tasks() -> Response:
    try:
        filters = Filters.model_validate(request.args.to_dict())
    except ValidationError as exc:
        raise Unprocessable("the filters are not valid", _errors(exc, ("query",))) from None
    errors = []
    if filters.state is not None and filters.state not in STATES:
        errors.append({"loc": ["query", "state"], "msg": "not a task state"})
    if filters.task is not None and filters.task not in task_types():
        errors.append({"loc": ["query", "task"], "msg": "not a task type"})
    cursor = None
    if filters.cursor is not None:
        try:
            cursor = decode_cursor(filters.cursor)
        except ValueError:
            errors.append({"loc": ["query", "cursor"], "msg": "not a cursor this API gave"})
    if errors:
        raise Unprocessable("the filters are not valid", errors)
    items, next_cursor = jobs().list(current(), filters.state, filters.task, filters.limit, cursor)
    return jsonify({"items": items, "next_cursor": next_cursor})


@bp.get("/task-types")
def list_task_types() -> Response:
    listing = current_app.extensions.get("errand.task_types_listing")
    if listing is None:  # made once: pydantic's schemas take milliseconds
        registry = task_types()
        listing = orjson.dumps({"items": [registry[name].schema() for name in sorted(registry)]})
        current_app.extensions["errand.task_types_listing"] = listing
    return Response(listing, mimetype="application/json")
