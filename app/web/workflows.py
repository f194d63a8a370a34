"""The workflows API, version 1: create a chain or a group of tasks, watch it, cancel it.

Views parse and validate (every step as a submit is validated, every error at
once with its place), call ``app.jobs.workflows`` and shape the answer.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify
from pydantic import ValidationError

from app.errors import Unprocessable
from app.jobs.resource import FINAL_STATES
from app.jobs.workflows import KINDS, Step, Workflows
from app.schemas import WorkflowStep
from app.tasks.registry import Registry, validation_errors
from app.web.auth import current
from app.web.limits import quota, spent
from app.web.tasks import (
    LARGE_BODY,
    idempotency_key,
    json_object,
    off_the_loop,
    task_id_or_404,
    task_types,
)
from app.webhooks import url_problem

bp = Blueprint("workflows", __name__, url_prefix="/api/v1")

Place = tuple[str | int, ...]


def workflows() -> Workflows:
    """The current application's workflow service."""
    service: Workflows = current_app.extensions["errand.workflows"]
    return service


def _step(raw: Any, place: Place, registry: Registry, errors: list[dict[str, Any]]) -> Step | None:
    """One step validated as a submit is (type, params, check, options); errors at ``place``."""
    try:
        step = WorkflowStep.model_validate(raw)
    except ValidationError as exc:
        errors += validation_errors(exc, place)
        return None
    task_type = registry.get(step.task)
    if task_type is None:
        msg = "not one of " + ", ".join(sorted(registry))
        errors.append({"loc": [*place, "task"], "msg": msg})
        return None
    try:
        params = task_type.params.model_validate(step.params)
    except ValidationError as exc:
        errors += validation_errors(exc, (*place, "params"))
        return None
    if task_type.check is not None:
        problems = task_type.check(params)
        if problems:
            errors += [{**p, "loc": [*place, *p["loc"]]} for p in problems]
            return None
    options = step.options.model_dump(exclude_none=True)
    return Step(task_type, params.model_dump(mode="json"), options)


def callback_url_problem(raw: Any) -> str | None:
    """What is wrong with a workflow's ``callback_url``, checked as a submit's is."""
    if not isinstance(raw, str):
        return "Input should be a valid string"
    config = current_app.config
    return url_problem(raw, config["WEBHOOK_ALLOW_PRIVATE"], config["WEBHOOK_ALLOWED_HOSTS"])


def parse(
    body: dict[str, Any], registry: Registry, max_steps: int
) -> tuple[str, list[Step], Step | None]:
    """The workflow's kind, steps and final step, or a 422 naming every problem."""
    errors: list[dict[str, Any]] = []
    if body.get("callback_url") is not None:
        problem = callback_url_problem(body["callback_url"])
        if problem:
            errors.append({"loc": ["callback_url"], "msg": problem})
    for name in sorted(set(body) - {*KINDS, "then", "callback_url"}):
        errors.append({"loc": [name], "msg": "Extra inputs are not permitted"})
    kinds = [k for k in KINDS if k in body]
    if len(kinds) != 1:
        errors.append({"loc": ["body"], "msg": "give exactly one of chain and group"})
    kind = kinds[0] if kinds else ""
    if "then" in body and kind != "group":
        errors.append({"loc": ["then"], "msg": "then follows a group only"})
    raw = body.get(kind) if kind else None
    count = len(raw) + ("then" in body) if isinstance(raw, list) else 0
    if kind and (not isinstance(raw, list) or not raw):
        errors.append({"loc": [kind], "msg": "a list of steps, at least one"})
    elif kind and count > max_steps:
        errors.append({"loc": [kind], "msg": f"at most {max_steps} steps in all (then included)"})
    if errors:  # the shape is wrong: the steps are not looked at
        raise Unprocessable("the workflow is not valid", errors)
    steps = [_step(item, (kind, i), registry, errors) for i, item in enumerate(raw or [])]
    then = _step(body["then"], ("then",), registry, errors) if "then" in body else None
    if errors:
        raise Unprocessable("the workflow is not valid", errors)
    return kind, [s for s in steps if s is not None], then


def workflow_response(
    workflow: dict[str, Any], status: int = 200, created: bool = False
) -> Response:
    """The workflow resource; Retry-After: 1 until its state is final."""
    response = jsonify(workflow)
    response.status_code = status
    if workflow["state"] not in FINAL_STATES:
        response.headers["Retry-After"] = "1"
    if created:
        response.headers["Location"] = workflow["links"]["self"]
    return response


@bp.post("/workflows")
def create() -> Response:
    key = idempotency_key()
    body = json_object()
    registry, max_steps = task_types(), current_app.config["WORKFLOW_MAX_STEPS"]
    if g.get("body_size", 0) > LARGE_BODY:
        kind, steps, then = off_the_loop(parse, body, registry, max_steps)
    else:
        kind, steps, then = parse(body, registry, max_steps)
    limit = quota("submit")
    workflow, usage = workflows().create(
        current(), kind, steps, then, g.get("request_id", ""), quota=limit, idempotency_key=key,
        callback_url=body.get("callback_url"),
    )  # fmt: skip
    if limit is not None:
        spent(limit, usage)
    return workflow_response(workflow, 202, created=True)


@bp.get("/workflows/<workflow_id>")
def status(workflow_id: str) -> Response:
    workflow_id = task_id_or_404(workflow_id, "workflow")
    return workflow_response(workflows().status(current(), workflow_id))


@bp.delete("/workflows/<workflow_id>")
def cancel(workflow_id: str) -> Response:
    workflow_id = task_id_or_404(workflow_id, "workflow")
    return workflow_response(workflows().cancel(current(), workflow_id), 202)
