"""The tasks API, version 1: submit, status, cancel, retry, list, task types.

Views parse, call ``app.jobs`` with the caller's principal, and shape the answer.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any, TypeVar

import orjson
from flask import Blueprint, Response, current_app, g, jsonify, request
from gevent import get_hub, monkey
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import RequestEntityTooLarge, UnsupportedMediaType

from app.errors import InvalidBody, StoreUnavailable, TaskNotFound, Unprocessable
from app.jobs import Jobs
from app.jobs.resource import FINAL_STATES, STATES, decode_cursor
from app.jobs.service import Principal
from app.schemas import Filters, Submission
from app.store import webhooks as delivery
from app.store.quotas import Quota, Usage
from app.tasks.registry import Registry, TaskType, validation_errors
from app.web.auth import current, key_name
from app.web.limits import quota, spent
from app.web.live import (
    Wait,
    body_and_etag,
    event_stream,
    matches,
    mint_stream_token,
    wait_for_change,
    watcher,
)
from app.webhooks import url_problem

bp = Blueprint("tasks", __name__, url_prefix="/api/v1")

MAX_WAIT = 30  # seconds a long-poll may hold its answer
T = TypeVar("T")


def jobs() -> Jobs:
    """The current application's job service."""
    service: Jobs = current_app.extensions["errand.jobs"]
    return service


def task_types() -> Registry:
    """The current application's task types."""
    registry: Registry = current_app.extensions["errand.task_types"]
    return registry


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


class NotFinite(ValueError):
    """A number in the body is too large to keep: a double's range, or a 64-bit integer's."""


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise NotFinite(f"not a finite number: {text[:40]}")
    return value


# Integers a record and a message can hold (orjson, Lua and most JSON readers stop here).
INT_RANGE = range(-(2**63), 2**64)


def _integer(text: str) -> int:
    value = int(text)
    if value not in INT_RANGE:
        raise NotFinite(f"an integer beyond 64 bits: {text[:40]}")
    return value


def _body() -> bytes:
    """The raw body, 413 past MAX_CONTENT_LENGTH, however it was sent."""
    if request.content_length is not None:
        return request.get_data(cache=False)  # Werkzeug answers 413 past the limit
    # Chunked: Werkzeug would cut the body at the limit without a word; read one more.
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    stream, parts, size = request.environ["wsgi.input"], [], 0
    while size <= limit:
        part = stream.read(min(65536, limit + 1 - size))
        if not part:
            return b"".join(parts)
        parts.append(part)
        size += len(part)
    raise RequestEntityTooLarge(f"the body is larger than {limit:,} bytes")


def json_object() -> dict[str, Any]:
    """The request body as a JSON object: 415, 413, 400 and 422 for anything else."""
    if not request.is_json:
        raise UnsupportedMediaType("send the body as application/json")
    raw = _body()
    g.body_size = len(raw)
    return parse_object(raw)


# orjson reads an integer beyond 64 bits as a float; the standard library keeps it, and
# ``_integer`` refuses it. Such an integer has 19 digits at least.
_LONG_NUMBER = re.compile(rb"[0-9]{19}")


def parse_object(raw: bytes) -> dict[str, Any]:
    """A body as a JSON object: 400 and 422 for anything else.

    orjson reads it (a tenth of the standard library's time) unless it refuses the
    body or it could read it otherwise (a long integer): then the standard library
    reads it, with the checks and error messages below, so both answer alike.
    """
    if not _LONG_NUMBER.search(raw):
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass  # the standard library says why
        else:
            if isinstance(body, dict):
                return body
    try:
        body = json.loads(
            raw, parse_constant=_reject_constant, parse_float=_finite, parse_int=_integer
        )
    except NotFinite as exc:
        raise Unprocessable(
            "the body holds a number too large to keep", [{"loc": ["body"], "msg": str(exc)}]
        ) from None
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
    return idempotency_key_of(request.headers.get("Idempotency-Key"))


def idempotency_key_of(raw: str | None) -> str | None:
    """An ``Idempotency-Key`` header's value (``raw``), or 400 (``idempotency_key``)."""
    if raw is None:
        return None
    value = raw[1:-1] if len(raw) >= 2 and raw[0] == raw[-1] == '"' else raw
    if not 1 <= len(value) <= 255 or not value.isprintable() or not value.isascii():
        raise InvalidBody("Idempotency-Key must be 1 to 255 printable ASCII characters")
    return value


# str(uuid.UUID(...)): lowercase hex in groups of 8-4-4-4-12, nothing else.
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def is_task_id(text: str) -> bool:
    """Whether ``text`` is an id as the server makes them (a UUID, in its canonical form)."""
    return _CANONICAL_UUID.fullmatch(text) is not None


def task_id_or_404(task_id: str, kind: str = "task") -> str:
    """Ids are UUIDs the server made; anything else is unknown without asking Redis."""
    if is_task_id(task_id):
        return task_id
    raise TaskNotFound(f"no {kind} {task_id}")


def task_response(
    task: dict[str, Any],
    status: int = 200,
    created: bool = False,
    encoded: tuple[bytes, str] | None = None,
) -> Response:
    """The task resource with its ETag; ``created``: a new task, its address in ``Location``."""
    body, etag = encoded or body_and_etag(task)
    response = Response(body, status, mimetype="application/json")
    response.headers.extend(task_headers(task, etag, created))
    return response


def task_headers(task: dict[str, Any], etag: str, created: bool = False) -> list[tuple[str, str]]:
    """The headers of a task resource answer: its ETag, when to ask again, a new one's address."""
    headers = [("ETag", etag)]
    if task["state"] not in FINAL_STATES:
        headers.append(("Retry-After", "1"))
    if created:
        headers.append(("Location", task["links"]["self"]))
    return headers


def validated(task_type: TaskType, raw: dict[str, Any]) -> BaseModel:
    """The params of a submit, validated and checked (``TaskType.check``), or a 422."""
    return task_type.validate(raw)


# Past this size a body's validation (10,000 addresses, templates) takes long enough to
# be run in a thread of gevent's pool, so the worker's other requests go on meanwhile.
LARGE_BODY = 64 * 1024


def off_the_loop(func: Callable[..., T], *args: Any) -> T:
    """``func(*args)`` in a real thread when gevent runs the server, else here."""
    if not monkey.is_module_patched("socket"):
        return func(*args)
    app = current_app._get_current_object()  # type: ignore[attr-defined]

    def run() -> T:
        with app.app_context():
            return func(*args)

    return get_hub().threadpool.apply(run)


def submission_of(body: dict[str, Any]) -> tuple[Submission, TaskType]:
    """A submit's body and its task type, or a 422; ``g.task_type`` names the type for metrics."""
    registry = task_types()
    submission, task_type = read_submission(body, registry)
    g.task_type = submission.task if task_type else "unknown"
    if task_type is None:
        raise Unprocessable(
            f"unknown task type {submission.task!r}",
            [{"loc": ["task"], "msg": "not one of " + ", ".join(sorted(registry))}],
        )
    return submission, task_type


def read_submission(body: dict[str, Any], registry: Registry) -> tuple[Submission, TaskType | None]:
    """A submit's body (or a 422) and its task type in ``registry`` (None: no such type)."""
    try:
        submission = Submission.model_validate(body)
    except ValidationError as exc:
        raise Unprocessable("the submission is not valid", validation_errors(exc)) from None
    return submission, registry.get(submission.task)


def accept(
    submission: Submission,
    task_type: TaskType,
    params: BaseModel,
    idempotency: str | None,
    fields: dict[str, str] | None = None,
    remote_addr: str | None = None,
) -> dict[str, Any]:
    """Submit for the caller, counted in its submit window: the task resource (or an error)."""
    limit = quota("submit", remote_addr)
    task, usage = submit_as(
        jobs(), current(), submission, task_type, params, idempotency, g.get("request_id", ""),
        limit, fields,
    )  # fmt: skip
    if limit is not None:
        spent(limit, usage)
    return task


def submit_as(
    service: Jobs,
    principal: Principal,
    submission: Submission,
    task_type: TaskType,
    params: BaseModel,
    idempotency: str | None,
    request_id: str,
    limit: Quota | None,
    fields: dict[str, str] | None = None,
) -> tuple[dict[str, Any], Usage | None]:
    """``accept`` with the service, the caller and its window given, and what the window left."""
    options = submission.options.model_dump(exclude_none=True)
    return service.submit(
        principal,
        task_type,
        params.model_dump(mode="json"),
        options,
        idempotency,
        request_id,
        quota=limit,
        fields=fields,
    )


@bp.post("/tasks")
def submit() -> Response:
    submission, task_type = submission_of(json_object())
    fields = None
    if submission.callback_url is not None:
        config = current_app.config
        allow_private, allowed = config["WEBHOOK_ALLOW_PRIVATE"], config["WEBHOOK_ALLOWED_HOSTS"]
        problem = url_problem(submission.callback_url, allow_private, allowed)
        if problem:
            errors = [{"loc": ["callback_url"], "msg": problem}]
            raise Unprocessable("the callback_url is not valid", errors)
        fields = delivery.submit_fields(submission.callback_url)
    if g.get("body_size", 0) > LARGE_BODY:
        params = off_the_loop(validated, task_type, submission.params)
    else:
        params = validated(task_type, submission.params)
    task = accept(submission, task_type, params, idempotency_key(), fields)
    return task_response(task, 202, created=True)


@bp.post("/tasks/<task_id>/retry")
def retry_task(task_id: str) -> Response:
    task = jobs().resubmit(current(), task_id_or_404(task_id), g.get("request_id", ""))
    return task_response(task, 202, created=True)


def wait_seconds() -> float:
    """The ``wait`` of a long-poll: 0 to 30 seconds (0, or absent: answer at once)."""
    raw = request.args.get("wait")
    if raw is None:
        return 0.0
    try:
        seconds = int(raw)
    except ValueError:
        seconds = -1
    if not 0 <= seconds <= MAX_WAIT:
        raise Unprocessable(
            "the filters are not valid",
            [{"loc": ["query", "wait"], "msg": f"a whole number of seconds, 0 to {MAX_WAIT}"}],
        )
    return float(seconds)


def read(task_id: str, remote_addr: str | None = None) -> dict[str, Any]:
    """The task for the caller, counted in its read window (or an error)."""
    limit = quota("read", remote_addr)
    task, usage = jobs().read(current(), task_id, limit)
    if limit is not None:
        spent(limit, usage)
    return task


@bp.get("/tasks/<task_id>")
def status(task_id: str) -> Response:
    task_id = task_id_or_404(task_id)
    wait = wait_seconds() if request.args else 0.0
    task = read(task_id)
    principal, service = current(), jobs()
    body, etag = body_and_etag(task)
    client_has = request.headers.get("If-None-Match")
    if wait and task["state"] not in FINAL_STATES and (not client_has or matches(client_has, etag)):
        # Hold the answer until the task differs from what the client has.
        place = Wait(principal)
        try:
            task, body, etag = wait_for_change(
                lambda: service.status(principal, task_id), task_id, etag, wait, watcher()
            )
        except TimeoutError as exc:
            raise StoreUnavailable(f"could not wait for the task: {exc}") from exc
        finally:
            place.close()
    if matches(client_has, etag):
        response = Response(status=304)
        response.headers["ETag"] = etag
        return response
    return task_response(task, encoded=(body, etag))


@bp.get("/tasks/<task_id>/events")
def events(task_id: str) -> Response:
    """Server-Sent Events of one task (``app.web.live.event_stream``)."""
    task_id = task_id_or_404(task_id)
    principal, service, config = current(), jobs(), current_app.config
    service.status(principal, task_id)  # 404 now, not in the middle of a stream
    place = Wait(principal)
    last = request.headers.get("Last-Event-ID") or request.args.get("last_event_id", "")
    last = last if len(last) == 16 and all(c in "0123456789abcdef" for c in last) else ""
    stream = event_stream(
        lambda: service.status(principal, task_id),
        task_id,
        last,
        watcher(),
        place,
        config["SSE_HEARTBEAT"],
        config["SSE_MAX_SECONDS"],
    )
    response = Response(stream, mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
    return response


@bp.post("/tasks/<task_id>/stream-token")
def stream_token(task_id: str) -> Response:
    """A short-lived token for this task's events URL (EventSource sends no headers)."""
    task_id = task_id_or_404(task_id)
    principal = current()
    jobs().status(principal, task_id)
    token = mint_stream_token(principal, task_id)
    return jsonify(
        {
            "token": token,
            "expires_in": current_app.config["STREAM_TOKEN_TTL"],
            "events": f"/api/v1/tasks/{task_id}/events?token={token}",
        }
    )


@bp.delete("/tasks/<task_id>")
def cancel(task_id: str) -> Response:
    return task_response(jobs().cancel(current(), task_id_or_404(task_id)), 202)


@bp.get("/tasks")
def list_tasks() -> Response:
    args = request.args.to_dict()
    errors: list[dict[str, Any]] = []
    filters = None
    try:
        filters = Filters.model_validate(args)
    except ValidationError as exc:
        errors += validation_errors(exc, ("query",))
    registry = task_types()
    if "state" in args and args["state"] not in STATES:
        states = ", ".join(sorted(STATES))
        errors.append({"loc": ["query", "state"], "msg": f"not a task state: one of {states}"})
    if "task" in args and args["task"] not in registry:
        names = ", ".join(sorted(registry))
        errors.append({"loc": ["query", "task"], "msg": f"not a task type: one of {names}"})
    cursor = None
    if "cursor" in args:
        try:
            cursor = decode_cursor(args["cursor"])
        except ValueError:
            errors.append({"loc": ["query", "cursor"], "msg": "not a cursor this API gave"})
    if errors or filters is None:
        raise Unprocessable("the filters are not valid", errors)
    principal = current()
    items, next_cursor = jobs().list(principal, filters.state, filters.task, filters.limit, cursor)
    if principal.admin:
        for item in items:  # admins see whose each task is
            owner = item.get("owner")
            item["owner"] = {"id": owner, "name": key_name(owner)} if owner else None
    return jsonify({"items": items, "next_cursor": next_cursor})


@bp.get("/task-types")
def list_task_types() -> Response:
    listing = current_app.extensions.get("errand.task_types_listing")
    if listing is None:  # made once: pydantic's schemas take milliseconds
        registry = task_types()
        listing = orjson.dumps({"items": [registry[name].schema() for name in sorted(registry)]})
        current_app.extensions["errand.task_types_listing"] = listing
    return Response(listing, mimetype="application/json")
