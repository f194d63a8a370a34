"""The contract as OpenAPI 3.1 (``/api/v1/openapi.json``), rendered at ``/docs``.

The schemas come from the pydantic models that validate requests and describe
answers (``app.schemas``) and from each task type's params model; this module
adds the routes, their parameters, statuses and headers. The document is made
once per process, on its first request.
"""

from __future__ import annotations

import copy
from importlib.metadata import version
from typing import Any, get_args

import orjson
from flask import Blueprint, Flask, Response, abort, current_app, send_from_directory, url_for
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from swagger_ui_bundle import swagger_ui_path

from app import schemas
from app.tasks.registry import Registry
from app.web.problems import PROBLEM
from app.web.tasks import MAX_WAIT

bp = Blueprint("openapi", __name__)

JSON = "application/json"
METRICS_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # what /metrics sends: Prometheus 2 and 3 read it
# Every model an answer or a request body names; the models they use come along.
MODELS: list[type[BaseModel]] = [
    schemas.Submission,
    schemas.WorkflowSubmission,
    schemas.WorkflowResource,
    schemas.TaskResource,
    schemas.TaskList,
    schemas.TaskTypeList,
    schemas.StreamToken,
    schemas.WorkerList,
    schemas.QueueList,
    schemas.Health,
    schemas.Ready,
    schemas.Problem,
    schemas.ScheduleCreate,
    schemas.SchedulePatch,
    schemas.ScheduleResource,
    schemas.ScheduleList,
]

HEADERS: dict[str, dict[str, Any]] = {
    "X-Request-ID": {
        "description": "The request's id: the client's X-Request-ID if it matches "
        "`[A-Za-z0-9._-]{1,128}`, else a new one. Logs and the task's worker lines carry it.",
        "required": True,
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,128}$"},
    },
    "RateLimit-Policy": {
        "description": 'The limit this answer counted against: `"submit";q=50;w=1` (50 per '
        'second), `"read";q=200;w=1`; on a 429 of a cap, `"in-flight";q=1000` or `"waits";q=100`.',
        "schema": {"type": "string", "pattern": '^"[a-z-]+";q=[0-9]+(;w=[0-9]+)?$'},
    },
    "RateLimit": {
        "description": 'What is left of the window: `"submit";r=49;t=1` (49 requests, 1 s '
        "until the window ends).",
        "schema": {"type": "string", "pattern": '^"[a-z-]+";r=[0-9]+;t=[0-9]+$'},
    },
    "Retry-After": {
        "description": "Seconds to wait before asking again.",
        "schema": {"type": "integer", "minimum": 1},
    },
    "Location": {
        "description": "The new task's address.",
        "required": True,
        "schema": {"type": "string", "pattern": "^/api/v1/tasks/[0-9a-f-]{36}$"},
    },
    "ETag": {
        "description": "A strong validator of exactly this task resource (it changes with its "
        "state and progress); send it back in If-None-Match.",
        "required": True,
        "schema": {"type": "string", "pattern": '^"[0-9a-f]{16}"$'},
    },
    "WWW-Authenticate": {
        "description": 'The challenge: `Bearer realm="errand"`, with `error="invalid_token"` '
        "for a wrong or revoked key.",
        "required": True,
        "schema": {"type": "string", "pattern": "^Bearer "},
    },
}

# What the routes that need a key may all answer besides their own statuses.
COMMON_ERRORS = {
    "401": "Unauthenticated",
    "429": "TooManyRequests",
    "500": "Unexpected",
    "503": "Unavailable",
}


def _ref(name: str, kind: str = "schemas") -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _answer(
    description: str,
    schema: dict[str, Any] | None = None,
    media: str = JSON,
    headers: tuple[str, ...] = (),
    required: tuple[str, ...] = (),
) -> dict[str, Any]:
    """A response object: X-Request-ID on every one, the body only when there is one.

    ``required``: headers this answer always has, though others may lack them.
    """
    found: dict[str, Any] = {name: _ref(name, "headers") for name in ("X-Request-ID", *headers)}
    found.update({name: {**HEADERS[name], "required": True} for name in required})
    response: dict[str, Any] = {"description": description, "headers": found}
    if schema is not None:
        response["content"] = {media: {"schema": schema}}
    return response


def _problem(
    description: str, headers: tuple[str, ...] = (), required: tuple[str, ...] = ()
) -> dict[str, Any]:
    return _answer(description, _ref("Problem"), PROBLEM, headers, required)


def _task(description: str, *headers: str) -> dict[str, Any]:
    """A task resource answer, with its ETag; Retry-After: 1 until its state is final."""
    return _answer(description, _ref("TaskResource"), headers=("ETag", "Retry-After", *headers))


def _responses() -> dict[str, Any]:
    return {
        "Unauthenticated": _problem(
            "No API key, or a wrong or revoked one.", ("WWW-Authenticate",)
        ),
        "Forbidden": _problem("This route needs an admin key."),
        "NotFound": _problem(
            "No such task: unknown, expired, or another key's (all three answer alike)."
        ),
        "TooManyRequests": _problem(
            "The key spent its rate window (RATE_LIMIT_SUBMIT for submits, RATE_LIMIT_READ "
            "for the rest), or has as many tasks in flight (IN_FLIGHT_LIMIT) or long-polls "
            "and event streams open (WAIT_LIMIT) as it may.",
            ("RateLimit",),
            ("Retry-After", "RateLimit-Policy"),
        ),
        "Unavailable": _problem(
            "Redis or the broker did not answer in time; nothing was left half-done.",
            required=("Retry-After",),
        ),
        "Unexpected": _problem("An unexpected error; the detail names the request id."),
    }


def _param(name: str, where: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": where, "schema": schema, "description": description}


def _not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A query field's schema without pydantic's null choice: a query names it or leaves it out."""
    choices = [s for s in schema.get("anyOf", []) if s.get("type") != "null"]
    found = {k: v for k, v in schema.items() if k not in {"anyOf", "title", "description"}}
    if len(choices) == 1:
        found.update(choices[0])
    elif choices:
        found["anyOf"] = choices
    if "default" in found and found["default"] is None:
        del found["default"]
    return found


def _filters(task_names: list[str]) -> list[dict[str, Any]]:
    """The query of ``GET /api/v1/tasks``, from ``Filters``; state and task as their choices."""
    properties = schemas.Filters.model_json_schema()["properties"]
    choices = {"state": list(get_args(schemas.State)), "task": task_names}
    found = []
    for name, schema in properties.items():
        plain = _not_null(schema)
        if name in choices:
            plain["enum"] = choices[name]
        found.append(_param(name, "query", plain, schema.get("description", "")))
    return found


def _components(registry: Registry) -> dict[str, Any]:
    """Every model's JSON Schema, and one submission per task type, with its params."""
    params = list(dict.fromkeys(registry[name].params for name in sorted(registry)))
    refs, top = models_json_schema(
        [(model, "validation") for model in [*MODELS, *params]],
        ref_template="#/components/schemas/{model}",
    )
    found: dict[str, Any] = top["$defs"]
    base = found["Submission"]
    for name in sorted(registry):
        model = registry[name].params
        variant = copy.deepcopy(base)
        variant["title"] = f"Submission of {name}"
        variant["description"] = f"{name}: {registry[name].description}"
        variant["properties"]["task"] = {"const": name}
        variant["properties"]["params"] = refs[(model, "validation")]
        if model.model_json_schema().get("required"):
            variant["required"] = ["task", "params"]
        found[f"Submission.{name}"] = variant
    # A workflow's step is a submission of one of the task types, as a submit's body is.
    workflow = found["WorkflowSubmission"]["properties"]
    for kind in ("chain", "group"):
        workflow[kind]["items"] = _submission(registry)
    workflow["then"] = {**_submission(registry), "description": workflow["then"]["description"]}
    found["WorkflowSubmission"]["oneOf"] = [
        {
            "required": ["chain"],
            "not": {"anyOf": [{"required": ["group"]}, {"required": ["then"]}]},
        },
        {"required": ["group"], "not": {"required": ["chain"]}},
    ]
    return found


def _submission(registry: Registry) -> dict[str, Any]:
    names = sorted(registry)
    return {
        "oneOf": [_ref(f"Submission.{name}") for name in names],
        "discriminator": {
            "propertyName": "task",
            "mapping": {name: f"#/components/schemas/Submission.{name}" for name in names},
        },
    }


def _webhook(workflow: bool = False) -> dict[str, Any]:
    """What a worker POSTs to a callback_url once the task (or the workflow) is final."""
    what, schema, id_header = "task", "TaskResource", "Errand-Task-Id"
    if workflow:
        what, schema, id_header = "workflow", "WorkflowResource", "Errand-Workflow-Id"

    def header(name: str, description: str, pattern: str = "") -> dict[str, Any]:
        schema = {"type": "string", **({"pattern": pattern} if pattern else {})}
        found = _param(name, "header", schema, description)
        found["required"] = True
        return found

    return {
        "post": {
            "summary": f"The {what} is final (SUCCESS, FAILURE or REVOKED)",
            "description": f"The {what} resource as GET answered it when it was sent. Retried "
            "with backoff on errors, timeouts, 408, 429 and 5xx, up to WEBHOOK_MAX_ATTEMPTS; no "
            f"redirect is followed. At least once: dedupe on {id_header}.",
            "parameters": [
                header(
                    "Errand-Signature",
                    "`t=<unix seconds>,v1=<hex>`: HMAC-SHA256, keyed with WEBHOOK_SECRET, over "
                    "`<t>.` followed by the body as sent. Check it in constant time, and that t "
                    "is recent.",
                    r"^t=\d+,v1=[0-9a-f]{64}$",
                ),
                header(id_header, f"The {what}'s id: one webhook per {what}."),
                header("Errand-Delivery-Id", "A new id for each attempt."),
                header("Errand-Attempt", "1 for the first attempt, 2 for the next, ...", r"^\d+$"),
            ],
            "requestBody": {"required": True, "content": {JSON: {"schema": _ref(schema)}}},
            "responses": {
                "2XX": {"description": "Delivered."},
                "default": {
                    "description": "408, 429 and 5xx are retried; any other answer fails the "
                    "delivery at once."
                },
            },
        }
    }


def _workflow(description: str, created: bool = False) -> dict[str, Any]:
    """A workflow resource answer; Retry-After: 1 until its state is final."""
    answer = _answer(description, _ref("WorkflowResource"), headers=("Retry-After",))
    if created:
        answer["headers"]["Location"] = {
            "description": "The new workflow's address.",
            "required": True,
            "schema": {"type": "string", "pattern": "^/api/v1/workflows/[0-9a-f-]{36}$"},
        }
    return answer


def _workflow_paths() -> dict[str, Any]:
    """The routes of ``app.web.workflows``."""
    workflow_id = _param(
        "workflow_id", "path", {"type": "string", "format": "uuid"}, "the workflow's id"
    )
    workflow_id["required"] = True
    not_found = _problem(
        "No such workflow: unknown, expired, or another key's (all three answer alike)."
    )
    idempotency_key = _param(
        "Idempotency-Key",
        "header",
        {"type": "string", "pattern": '^(?!""$)(?:"[ -~]{1,255}"|[ -~]{1,255})$'},
        "As on POST /api/v1/tasks: the same key with the same workflow (after validation) "
        "answers the workflow the first one made (202, same id); with another, 422. Apart from "
        "the keys of task submits.",
    )
    return {
        "/api/v1/workflows": {
            "post": {
                "operationId": "createWorkflow",
                "tags": ["workflows"],
                "summary": "Run tasks as a chain, or as a group with a final step",
                "description": "Every step is validated as a submit is (every error at once, "
                'with its place, e.g. ["chain", 2, "params", "to"]); at most '
                "WORKFLOW_MAX_STEPS steps (then included). Each step is an ordinary task, with "
                "links.workflow. The workflow counts once against RATE_LIMIT_SUBMIT and each "
                "step against IN_FLIGHT_LIMIT: a workflow that does not fit is refused whole "
                "(429). A 202 is on the broker; any other answer left nothing behind. With a "
                "callback_url (checked as a submit's is), the final workflow resource is POSTed "
                "there once (workflowFinished).",
                "parameters": [idempotency_key],
                "requestBody": {
                    "required": True,
                    "content": {JSON: {"schema": _ref("WorkflowSubmission")}},
                },
                "responses": {
                    "202": _workflow(
                        "Accepted: the new workflow, every step PENDING (with a repeated "
                        "Idempotency-Key, the one it made first).",
                        True,
                    ),
                    "400": _problem(
                        "The body is not a JSON object, or the Idempotency-Key is malformed."
                    ),
                    "413": _problem("The body is larger than MAX_CONTENT_LENGTH (1 MiB)."),
                    "415": _problem("The body is not application/json."),
                    "422": _problem(
                        "The workflow or a step is not valid (each named in errors), or an "
                        "Idempotency-Key used before with another workflow."
                    ),
                },
                "callbacks": {
                    "workflowFinished": {"{$request.body#/callback_url}": _webhook(workflow=True)}
                },
            },
        },
        "/api/v1/workflows/{workflow_id}": {
            "parameters": [workflow_id],
            "get": {
                "operationId": "getWorkflow",
                "tags": ["workflows"],
                "summary": "A workflow's state, progress and steps",
                "responses": {"200": _workflow("The workflow."), "404": not_found},
            },
            "delete": {
                "operationId": "cancelWorkflow",
                "tags": ["workflows"],
                "summary": "Cancel a workflow",
                "description": "Every step that has not finished is cancelled as DELETE "
                "/api/v1/tasks/{task_id} cancels a task; steps not published yet never start.",
                "responses": {
                    "202": _workflow("The workflow, REVOKED (or FAILURE, if a step had failed)."),
                    "404": not_found,
                    "409": _problem("Every step is final already."),
                },
            },
        },
    }


def _paths(registry: Registry, metrics_public: bool) -> dict[str, Any]:
    task_id = _param("task_id", "path", {"type": "string", "format": "uuid"}, "the task's id")
    task_id["required"] = True
    idempotency_key = _param(
        "Idempotency-Key",
        "header",
        # A Structured Field string, or a bare token; 1 to 255 printable ASCII either way.
        {"type": "string", "pattern": '^(?!""$)(?:"[ -~]{1,255}"|[ -~]{1,255})$'},
        'A Structured Field string (`"order-4711"`) or a bare token, 1 to 255 printable '
        "ASCII characters (else 400). The same key with the same request (task, params, "
        "options and callback_url, after validation) answers the task the first one made "
        "(202, same id); with another request, 422. Kept per key for IDEMPOTENCY_TTL (24 h); "
        "a failed submit frees it.",
    )
    if_none_match = _param(
        "If-None-Match",
        "header",
        {"type": "string"},
        "The ETag the client has: 304 when the task still matches it.",
    )
    wait = _param(
        "wait",
        "query",
        {"type": "integer", "minimum": 0, "maximum": MAX_WAIT, "default": 0},
        "Long-poll: hold the answer up to this many seconds, until the task's state or progress "
        "differs from what the client has (its If-None-Match, else the task at request time). "
        "When the time is up with no change: 304 if If-None-Match still matches, else 200. A "
        "final task, or an If-None-Match that no longer matches, answers at once.",
    )
    token = _param(
        "token",
        "query",
        {"type": "string"},
        "A stream token from POST .../stream-token, instead of the Authorization header "
        "(a browser's EventSource cannot send headers).",
    )
    last_event_id = _param(
        "Last-Event-ID",
        "header",
        {"type": "string"},
        "The id of the last event received (16 hex digits; anything else counts as none): the "
        "stream sends the current state only if it differs. EventSource sends it by itself "
        "when it reconnects.",
    )
    last_event_query = _param(
        "last_event_id", "query", {"type": "string"}, "The same as Last-Event-ID, in the URL."
    )
    not_found = _ref("NotFound", "responses")
    public: list[dict[str, Any]] = []
    return {
        "/api/v1/tasks": {
            "post": {
                "operationId": "submitTask",
                "tags": ["tasks"],
                "summary": "Submit a job",
                "description": "Hand a job to the broker. A 202 is on the broker; any other "
                "answer left nothing behind (no record, no message).",
                "parameters": [idempotency_key],
                "requestBody": {
                    "required": True,
                    "content": {JSON: {"schema": _submission(registry)}},
                },
                "responses": {
                    "202": _task(
                        "Accepted: the new task (with a repeated Idempotency-Key, the one it "
                        "made first).",
                        "Location",
                    ),
                    "400": _problem(
                        "The body is not a JSON object, or the Idempotency-Key is malformed."
                    ),
                    "413": _problem("The body is larger than MAX_CONTENT_LENGTH (1 MiB)."),
                    "415": _problem("The body is not application/json."),
                    "422": _problem(
                        "Unknown task type, params, options or callback_url not valid, a number "
                        "too large to keep (with errors), or an Idempotency-Key used before "
                        "with another request."
                    ),
                },
                "callbacks": {"taskFinished": {"{$request.body#/callback_url}": _webhook()}},
            },
            "get": {
                "operationId": "listTasks",
                "tags": ["tasks"],
                "summary": "List tasks, newest first",
                "description": "The caller's tasks; an admin key's: every task, each with "
                "its owner.",
                "parameters": _filters(sorted(registry)),
                "responses": {
                    "200": _answer("A page of tasks.", _ref("TaskList")),
                    "422": _problem("Filters not valid (each named in errors)."),
                },
            },
        },
        "/api/v1/tasks/{task_id}": {
            "parameters": [task_id],
            "get": {
                "operationId": "getTask",
                "tags": ["tasks"],
                "summary": "A task's status",
                "parameters": [wait, if_none_match],
                "responses": {
                    "200": _task("The task."),
                    "304": _answer("The task still matches If-None-Match.", headers=("ETag",)),
                    "404": not_found,
                    "422": _problem(f"wait is not a whole number of seconds, 0 to {MAX_WAIT}."),
                },
            },
            "delete": {
                "operationId": "cancelTask",
                "tags": ["tasks"],
                "summary": "Cancel a task",
                "description": "A task that has not started never starts; a running one is "
                "stopped. The cancel is kept in Redis, so it holds across worker restarts.",
                "responses": {
                    "202": _task("The task, REVOKED."),
                    "404": not_found,
                    "409": _problem("The task is already final."),
                },
            },
        },
        "/api/v1/tasks/{task_id}/retry": {
            "parameters": [task_id],
            "post": {
                "operationId": "retryTask",
                "tags": ["tasks"],
                "summary": "Resubmit a FAILURE or REVOKED task",
                "description": "A new task with the same type, params, options and "
                "callback_url, linked both ways (links.retry_of on the new one, links.retried_by "
                "on the old one). A task is retried once: asked again, this answers the task its "
                "retry made.",
                "responses": {
                    "202": _task("The new task (or the one the first retry made).", "Location"),
                    "404": not_found,
                    "409": _problem(
                        "The task is not FAILURE or REVOKED, or its params are no longer kept."
                    ),
                },
            },
        },
        "/api/v1/tasks/{task_id}/events": {
            "parameters": [task_id],
            "get": {
                "operationId": "taskEvents",
                "tags": ["tasks"],
                "summary": "Watch a task: Server-Sent Events",
                "description": "First `retry: 1000`; then one `event: state` per change, with "
                "`id: <its ETag, unquoted>` and `data: <the task resource as JSON>` (the current "
                "state first); `: keep-alive` comments every SSE_HEARTBEAT seconds. The stream "
                "ends after the final state, or after SSE_MAX_SECONDS (reconnect with "
                "Last-Event-ID).",
                "security": [{"bearerAuth": []}, {"streamToken": []}],
                "parameters": [token, last_event_id, last_event_query],
                "responses": {
                    "200": _answer(
                        "The event stream.",
                        {"type": "string"},
                        "text/event-stream",
                    ),
                    "401": _problem(
                        "No API key and no good stream token (wrong, expired or for another "
                        "task), or a wrong or revoked key.",
                        ("WWW-Authenticate",),
                    ),
                    "404": not_found,
                },
            },
        },
        "/api/v1/tasks/{task_id}/stream-token": {
            "parameters": [task_id],
            "post": {
                "operationId": "createStreamToken",
                "tags": ["tasks"],
                "summary": "A short-lived token for the task's events URL",
                "description": "Bound to this task and to the key that asks; good for "
                "STREAM_TOKEN_TTL seconds (default 60).",
                "responses": {
                    "200": _answer("The token and the URL to open.", _ref("StreamToken")),
                    "404": not_found,
                },
            },
        },
        "/api/v1/task-types": {
            "get": {
                "operationId": "listTaskTypes",
                "tags": ["task types"],
                "summary": "What can be submitted, with each params JSON Schema",
                "responses": {"200": _answer("Every task type.", _ref("TaskTypeList"))},
            }
        },
        "/api/v1/workers": {
            "get": {
                "operationId": "listWorkers",
                "tags": ["operations"],
                "summary": "Live workers (admin keys only)",
                "responses": {
                    "200": _answer("Workers with a fresh heartbeat.", _ref("WorkerList")),
                    "403": _ref("Forbidden", "responses"),
                },
            }
        },
        "/api/v1/queues": {
            "get": {
                "operationId": "listQueues",
                "tags": ["operations"],
                "summary": "Every queue: depth, task types, consumers (admin keys only)",
                "responses": {
                    "200": _answer(
                        "Each queue Errand uses: messages waiting, the task types routed to it "
                        "and the live workers that consume it.",
                        _ref("QueueList"),
                    ),
                    "403": _ref("Forbidden", "responses"),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "tags": ["operations"],
                "summary": "Prometheus metrics (admin keys only, unless METRICS_PUBLIC)",
                "responses": {
                    "200": _answer(
                        f"Prometheus's text format ({METRICS_TYPE}).",
                        {"type": "string"},
                        METRICS_TYPE.split(";")[0],
                    ),
                    **({} if metrics_public else {"403": _ref("Forbidden", "responses")}),
                },
                **({"security": public} if metrics_public else {}),
            }
        },
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "tags": ["health"],
                "summary": "Liveness: the process serves",
                "security": public,
                "responses": {"200": _answer("Alive.", _ref("Health"))},
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "tags": ["health"],
                "summary": "Readiness: broker, result store and at least one worker",
                "security": public,
                "responses": {
                    "200": _answer("Ready.", _ref("Ready")),
                    "503": _problem(
                        "Not ready; the detail names the checks that failed.",
                        required=("Retry-After",),
                    ),
                },
            }
        },
        "/api/v1/openapi.json": {
            "get": {
                "operationId": "openapi",
                "tags": ["docs"],
                "summary": "This document",
                "security": public,
                "responses": {"200": _answer("OpenAPI 3.1.", {"type": "object"})},
            }
        },
        "/docs": {
            "get": {
                "operationId": "docs",
                "tags": ["docs"],
                "summary": "This document, rendered by Swagger UI",
                "security": public,
                "responses": {"200": _answer("The page.", {"type": "string"}, "text/html")},
            }
        },
        "/docs/{filename}": {
            "get": {
                "operationId": "docsAsset",
                "tags": ["docs"],
                "summary": "The docs page's scripts, styles and icons",
                "security": public,
                "parameters": [
                    {
                        **_param("filename", "path", {"enum": sorted(ASSETS)}, "a file's name"),
                        "required": True,
                    }
                ],
                "responses": {
                    "200": {
                        **_answer("The file."),
                        "content": {media: {} for media in sorted(set(ASSETS.values()))},
                    },
                    "304": _answer("The file has not changed since the copy the client has."),
                    "404": _problem("No such file."),
                },
            }
        },
    }


def _schedule_paths() -> dict[str, Any]:
    """The routes of ``app.web.schedules``."""
    schedule_id = _param(
        "schedule_id",
        "path",
        {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,63}$"},
        "the schedule's id (a UUID, or a name from SCHEDULES_FILE)",
    )
    schedule_id["required"] = True
    not_found = _problem("No such schedule: unknown, or another key's (both answer alike).")
    shown = _answer("The schedule.", _ref("ScheduleResource"))
    created = _answer("Created: the new schedule.", _ref("ScheduleResource"))
    created["headers"]["Location"] = {
        "description": "The new schedule's address.",
        "required": True,
        "schema": {"type": "string", "pattern": "^/api/v1/schedules/[0-9a-f-]{36}$"},
    }
    body = {
        "400": _problem("The body is not a JSON object."),
        "413": _problem("The body is larger than MAX_CONTENT_LENGTH (1 MiB)."),
        "415": _problem("The body is not application/json."),
    }
    properties = schemas.ScheduleFilters.model_json_schema()["properties"]
    query = [
        _param(name, "query", _not_null(schema), schema.get("description", ""))
        for name, schema in properties.items()
    ]

    def request(model: str) -> dict[str, Any]:
        return {"required": True, "content": {JSON: {"schema": _ref(model)}}}

    return {
        "/api/v1/schedules": {
            "post": {
                "operationId": "createSchedule",
                "tags": ["schedules"],
                "summary": "Make a schedule",
                "description": "A task type, its params (validated as a submit validates "
                "them) and a crontab in a time zone or an interval. Each run is an ordinary "
                "task of the caller's key, with links.schedule; with a callback_url, each run's "
                "final task resource is POSTed there, as a submit's would be.",
                "requestBody": request("ScheduleCreate"),
                "responses": {
                    "201": created,
                    **body,
                    "409": _problem("The key has SCHEDULE_LIMIT schedules already."),
                    "422": _problem(
                        "Unknown task type, params not valid, a bad crontab, time zone or "
                        "interval, both or neither of crontab and interval, a callback_url "
                        "refused as a submit's would be, unknown fields."
                    ),
                },
                "callbacks": {"runFinished": {"{$request.body#/callback_url}": _webhook()}},
            },
            "get": {
                "operationId": "listSchedules",
                "tags": ["schedules"],
                "summary": "List schedules, oldest first",
                "description": "The caller's schedules; an admin key's: every schedule, "
                "those of SCHEDULES_FILE too.",
                "parameters": query,
                "responses": {
                    "200": _answer("A page of schedules.", _ref("ScheduleList")),
                    "422": _problem("Filters not valid (each named in errors)."),
                },
            },
        },
        "/api/v1/schedules/{schedule_id}": {
            "parameters": [schedule_id],
            "get": {
                "operationId": "getSchedule",
                "tags": ["schedules"],
                "summary": "A schedule, its next and last run",
                "responses": {"200": shown, "404": not_found},
            },
            "patch": {
                "operationId": "updateSchedule",
                "tags": ["schedules"],
                "summary": "Change, pause or resume a schedule",
                "requestBody": request("SchedulePatch"),
                "responses": {
                    "200": shown,
                    **body,
                    "404": not_found,
                    "409": _problem("The schedule is declared in SCHEDULES_FILE."),
                    "422": _problem("The changes are not valid (each named in errors)."),
                },
            },
            "delete": {
                "operationId": "deleteSchedule",
                "tags": ["schedules"],
                "summary": "Delete a schedule (the tasks it made stay)",
                "responses": {
                    "204": _answer("Deleted: it makes no more runs."),
                    "404": not_found,
                    "409": _problem("The schedule is declared in SCHEDULES_FILE."),
                },
            },
        },
    }


def _complete(paths: dict[str, Any]) -> None:
    """What every route has: X-Request-ID; with a key, the common errors and rate-limit headers."""
    for item in paths.values():
        for method, operation in item.items():
            if method == "parameters":
                continue
            operation.setdefault("parameters", []).append(_ref("X-Request-ID", "parameters"))
            if operation.get("security") == []:
                continue
            responses = operation["responses"]
            for status, name in COMMON_ERRORS.items():
                responses.setdefault(status, _ref(name, "responses"))
            for answer in responses.values():
                if "headers" in answer:  # not a $ref: the shared ones list them already
                    for name in ("RateLimit-Policy", "RateLimit"):
                        answer["headers"].setdefault(name, _ref(name, "headers"))
            operation["responses"] = dict(sorted(responses.items()))


def document(app: Flask) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``app``, with its task types."""
    registry: Registry = app.extensions["errand.task_types"]
    paths = {
        **_paths(registry, app.config["METRICS_PUBLIC"]),
        **_schedule_paths(),
        **_workflow_paths(),
    }
    _complete(paths)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Errand",
            "version": version("errand"),
            "summary": "Slow jobs out of the request cycle: submit, watch, cancel, retry.",
            "description": "Every error is application/problem+json (RFC 9457). Every answer "
            "carries X-Request-ID. Answers counted against a rate limit carry RateLimit-Policy "
            "and RateLimit (IETF draft 'RateLimit header fields for HTTP'); a 429 also "
            "Retry-After. A task is visible only to the key that made it (and to admin keys).",
        },
        "tags": [
            {"name": "tasks", "description": "Submit, watch, cancel and retry jobs."},
            {"name": "workflows", "description": "Tasks as a chain, or a group and a final step."},
            {"name": "task types", "description": "What can be submitted."},
            {"name": "schedules", "description": "Periodic jobs; each run is a task."},
            {"name": "operations", "description": "What operators watch (admin keys)."},
            {"name": "health", "description": "For load balancers and orchestrators."},
            {"name": "docs", "description": "This document."},
        ],
        "security": [{"bearerAuth": []}],
        "paths": paths,
        "components": {
            "schemas": _components(registry),
            "responses": _responses(),
            "parameters": {
                "X-Request-ID": _param(
                    "X-Request-ID",
                    "header",
                    {"type": "string"},
                    "An id for this request, kept if it matches `[A-Za-z0-9._-]{1,128}` (else "
                    "the API makes one): the answer, the logs and the job's worker lines carry it.",
                )
            },
            "headers": HEADERS,
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "erd_<id>_<secret>",
                    "description": "An API key: `flask keys create NAME [--admin]` prints one.",
                },
                "streamToken": {
                    "type": "apiKey",
                    "in": "query",
                    "name": "token",
                    "description": "A stream token, for the events route only.",
                },
            },
        },
    }


@bp.get("/api/v1/openapi.json")
def spec() -> Response:
    body = current_app.extensions.get("errand.openapi")
    if body is None:  # made once per process: the schemas take pydantic some milliseconds
        body = orjson.dumps(document(current_app))
        current_app.extensions["errand.openapi"] = body
    return Response(body, mimetype=JSON)


# -- /docs: Swagger UI from the swagger_ui_bundle package, no CDN -------------------------------

# The files of swagger_ui_bundle the page uses, and the page's own script.
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
    "favicon-16x16.png": "image/png",
    "errand-docs.js": "text/javascript",
}

# Swagger UI 4 (what swagger_ui_bundle ships) renders OpenAPI 3.0 only: the page shows it this
# document as 3.0, with 3.1's null choices and const written the 3.0 way. The script is a file
# of its own, as the page's policy runs no inline script.
DOCS_SCRIPT = """\
function as30(node) {
  if (Array.isArray(node)) return node.map(as30);
  if (node === null || typeof node !== "object") return node;
  const out = {};
  for (const [key, value] of Object.entries(node)) out[key] = as30(value);
  if (Array.isArray(out.anyOf) && out.anyOf.some((s) => s.type === "null")) {
    const rest = out.anyOf.filter((s) => s.type !== "null");
    delete out.anyOf;
    const one = rest.length === 1 ? (rest[0].$ref ? { allOf: rest } : rest[0]) : { anyOf: rest };
    Object.assign(out, one, { nullable: true });
  }
  if ("const" in out) {
    out.enum = [out.const];
    delete out.const;
  }
  return out;
}

fetch(document.body.dataset.spec)
  .then((answer) => answer.json())
  .then((spec) => {
    window.ui = SwaggerUIBundle({
      spec: { ...as30(spec), openapi: "3.0.3" },
      dom_id: "#swagger-ui",
      deepLinking: true,
      layout: "BaseLayout",
    });
  });
"""

# The page's own scripts and styles only. Swagger UI sets styles from script through the DOM,
# which style-src does not govern, so no 'unsafe-inline'; its CSS has data: images (icons).
DOCS_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@bp.get("/docs")
def docs() -> Response:
    def asset(name: str) -> str:
        return url_for("openapi.docs_asset", filename=name)

    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Errand API</title>
<link rel="stylesheet" href="{asset("swagger-ui.css")}">
<link rel="icon" type="image/png" sizes="32x32" href="{asset("favicon-32x32.png")}">
<link rel="icon" type="image/png" sizes="16x16" href="{asset("favicon-16x16.png")}">
</head>
<body data-spec="{url_for("openapi.spec")}">
<div id="swagger-ui"></div>
<script src="{asset("swagger-ui-bundle.js")}"></script>
<script src="{asset("errand-docs.js")}"></script>
</body>
</html>
"""
    response = Response(page, mimetype="text/html")
    response.headers["Content-Security-Policy"] = DOCS_POLICY
    return response


@bp.get("/docs/<filename>")
def docs_asset(filename: str) -> Response:
    if filename not in ASSETS:
        abort(404)
    if filename == "errand-docs.js":
        return Response(DOCS_SCRIPT, mimetype=ASSETS[filename])
    return send_from_directory(swagger_ui_path, filename, mimetype=ASSETS[filename], max_age=3600)
