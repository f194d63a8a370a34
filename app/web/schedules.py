"""The schedules API: ``/api/v1/schedules``, periodic jobs whose runs are ordinary tasks.

Views parse, call ``app.jobs.schedules`` with the caller's principal, and shape the answer.
"""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request
from pydantic import ValidationError

from app.errors import ScheduleNotFound, Unprocessable
from app.jobs.resource import decode_cursor
from app.jobs.schedules import Schedules, Spec
from app.schemas import ScheduleCreate, ScheduleFilters, SchedulePatch
from app.tasks.registry import TaskType, validation_errors
from app.web.auth import current
from app.web.tasks import LARGE_BODY, json_object, off_the_loop, validated

bp = Blueprint("schedules", __name__, url_prefix="/api/v1")

# A schedule's id: a UUID the API made, or a name from SCHEDULES_FILE.
SCHEDULE_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


def schedules() -> Schedules:
    """The current application's schedule service."""
    service: Schedules = current_app.extensions["errand.schedules"]
    return service


def schedule_id_or_404(schedule_id: str) -> str:
    """Anything not shaped like an id is unknown without asking Redis."""
    if not SCHEDULE_ID.match(schedule_id):
        raise ScheduleNotFound(f"no schedule {schedule_id[:64]!r}")
    return schedule_id


def params_as_submitted(task_type: TaskType, raw: dict[str, Any]) -> dict[str, Any]:
    """Params validated exactly as ``POST /api/v1/tasks`` validates them."""
    if g.get("body_size", 0) > LARGE_BODY:
        params = off_the_loop(validated, task_type, raw)
    else:
        params = validated(task_type, raw)
    found: dict[str, Any] = params.model_dump(mode="json")
    return found


def _schedule_response(schedule: dict[str, Any], status: int = 200) -> Response:
    response = jsonify(schedule)
    response.status_code = status
    if status == 201:
        response.headers["Location"] = schedule["links"]["self"]
    return response


@bp.post("/schedules")
def create() -> Response:
    try:
        body = ScheduleCreate.model_validate(json_object())
    except ValidationError as exc:
        raise Unprocessable("the schedule is not valid", validation_errors(exc)) from None
    spec = Spec.of(body)
    schedule = schedules().create(current(), spec, params_as_submitted)
    return _schedule_response(schedule, 201)


@bp.get("/schedules")
def list_schedules() -> Response:
    args = request.args.to_dict()
    try:
        filters = ScheduleFilters.model_validate(args)
    except ValidationError as exc:
        errors = validation_errors(exc, ("query",))
        raise Unprocessable("the filters are not valid", errors) from None
    cursor = None
    if filters.cursor is not None:
        try:
            cursor = decode_cursor(filters.cursor)
        except ValueError:
            errors = [{"loc": ["query", "cursor"], "msg": "not a cursor this API gave"}]
            raise Unprocessable("the filters are not valid", errors) from None
    items, next_cursor = schedules().list(current(), filters.limit, cursor)
    return jsonify({"items": items, "next_cursor": next_cursor})


@bp.get("/schedules/<schedule_id>")
def get(schedule_id: str) -> Response:
    return _schedule_response(schedules().get(current(), schedule_id_or_404(schedule_id)))


@bp.patch("/schedules/<schedule_id>")
def update(schedule_id: str) -> Response:
    schedule_id = schedule_id_or_404(schedule_id)
    try:
        body = SchedulePatch.model_validate(json_object())
    except ValidationError as exc:
        raise Unprocessable("the changes are not valid", validation_errors(exc)) from None
    changes: dict[str, Any] = {name: getattr(body, name) for name in body.model_fields_set}
    if "options" in changes:
        changes["options"] = body.options.model_dump(exclude_none=True)
    schedule = schedules().update(current(), schedule_id, changes, params_as_submitted)
    return _schedule_response(schedule)


@bp.delete("/schedules/<schedule_id>")
def delete(schedule_id: str) -> Response:
    schedules().delete(current(), schedule_id_or_404(schedule_id))
    return Response(status=204)
