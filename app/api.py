"""The HTTP API, version 1: submit, status, cancel, list, task types."""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

from flask import Blueprint, Response, g, jsonify, request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from werkzeug.exceptions import UnsupportedMediaType

from app import auth, jobs, records
from app.errors import InvalidBody, TaskNotFound, Unprocessable
from app.limits import limiter, submit_exempt, submit_limit
from app.tasktypes import registry

bp = Blueprint("api", __name__, url_prefix="/api/v1")


class Options(BaseModel):
    """How to run a job: the only options a client may set."""

    model_config = ConfigDict(extra="forbid", strict=True)
    countdown: int = Field(0, ge=0, le=3600)
    priority: int | None = Field(None, ge=0, le=9)


class Submission(BaseModel):
    """The body of ``POST /api/v1/tasks``."""

    model_config = ConfigDict(extra="forbid", strict=True)
    task: str
    params: dict[str, Any] = Field(default_factory=dict)
    options: Options = Field(default_factory=Options)


class Filters(BaseModel):
    """The query of ``GET /api/v1/tasks``."""

    state: str | None = None
    task: str | None = None
    limit: int = Field(50, ge=1, le=200)
    cursor: str | None = None


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


def idempotency_of(
    task_name: str, params: dict[str, Any], options: dict[str, Any]
) -> tuple[str, str] | None:
    """The Redis key and request fingerprint for an ``Idempotency-Key`` header, if sent.

    The header is a Structured Field string (``"..."``) in the IETF draft; a bare
    token is accepted too.
    """
    raw = request.headers.get("Idempotency-Key")
    if raw is None:
        return None
    value = raw[1:-1] if len(raw) >= 2 and raw[0] == raw[-1] == '"' else raw
    if not 1 <= len(value) <= 255 or not value.isprintable() or not value.isascii():
        raise InvalidBody("Idempotency-Key must be 1 to 255 printable ASCII characters")
    request_body = {"task": task_name, "params": params, "options": options}
    fingerprint = hashlib.sha256(
        json.dumps(request_body, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()
    scoped = f"{auth.current().key_id}\0{value}"  # keys of different owners never meet
    key = "errand:idem:" + hashlib.sha256(scoped.encode()).hexdigest()
    return key, fingerprint


def task_id_or_404(task_id: str) -> str:
    """Ids are UUIDs the server made; anything else is unknown without asking Redis."""
    try:
        if str(uuid.UUID(task_id)) == task_id:
            return task_id
    except ValueError:
        pass
    raise TaskNotFound(f"no task {task_id}")


def task_response(task: dict[str, Any], status: int = 200) -> Response:
    response = jsonify(task)
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"
    if task["state"] not in records.FINAL_STATES:
        response.headers["Retry-After"] = "1"
    return response


@bp.post("/tasks")
@limiter.limit(submit_limit, exempt_when=submit_exempt)
def submit() -> Response:
    try:
        submission = Submission.model_validate(json_object())
    except ValidationError as exc:
        raise Unprocessable("the submission is not valid", _errors(exc)) from None
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
    params_json = params.model_dump(mode="json")
    idempotency = idempotency_of(submission.task, params_json, options)
    task = jobs.submit(task_type, params_json, options, idempotency)
    response = task_response(task, 202)
    response.headers["Location"] = task["links"]["self"]
    return response


@bp.post("/tasks/<task_id>/retry")
def retry(task_id: str) -> Response:
    task = jobs.retry(task_id_or_404(task_id))
    response = task_response(task, 202)
    response.headers["Location"] = task["links"]["self"]
    return response


@bp.get("/tasks/<task_id>")
def status(task_id: str) -> Response:
    return task_response(jobs.status(task_id_or_404(task_id)))


@bp.delete("/tasks/<task_id>")
def cancel(task_id: str) -> Response:
    return task_response(jobs.cancel(task_id_or_404(task_id)), 202)


@bp.get("/tasks")
def list_tasks() -> Response:
    try:
        filters = Filters.model_validate(request.args.to_dict())
    except ValidationError as exc:
        raise Unprocessable("the filters are not valid", _errors(exc, ("query",))) from None
    errors = []
    if filters.state is not None and filters.state not in records.STATES:
        errors.append({"loc": ["query", "state"], "msg": "not a task state"})
    if filters.task is not None and filters.task not in registry:
        errors.append({"loc": ["query", "task"], "msg": "not a task type"})
    cursor = None
    if filters.cursor is not None:
        try:
            cursor = records.decode_cursor(filters.cursor)
        except ValueError:
            errors.append({"loc": ["query", "cursor"], "msg": "not a cursor this API gave"})
    if errors:
        raise Unprocessable("the filters are not valid", errors)
    items, next_cursor = jobs.list_tasks(filters.state, filters.task, filters.limit, cursor)
    response = jsonify({"items": items, "next_cursor": next_cursor})
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/task-types")
def task_types() -> Response:
    return jsonify({"items": [registry[name].schema() for name in sorted(registry)]})
