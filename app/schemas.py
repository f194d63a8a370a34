"""The shapes of the HTTP contract, as pydantic models.

Requests (``Options``, ``Submission``, ``Filters``) are validated with them; the
answers (``TaskResource`` and the rest) are built as dicts by the views, for
speed, and these models describe them: ``app.web.openapi`` makes the OpenAPI
document from both, and the tests check every real answer against them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# -- requests -----------------------------------------------------------------------------------


class Options(BaseModel):
    """How to run a job: the only options a client may set."""

    model_config = ConfigDict(extra="forbid", strict=True)
    countdown: int = Field(0, ge=0, le=3600, description="seconds to wait before it runs")
    priority: int | None = Field(
        None, ge=0, le=9, description="0 to 9, higher runs first; none counts as 0"
    )


class Submission(BaseModel):
    """The body of ``POST /api/v1/tasks``."""

    model_config = ConfigDict(extra="forbid", strict=True)
    task: str = Field(description="a name from /api/v1/task-types")
    params: dict[str, Any] = Field(
        default_factory=dict, description="validated against the task type's params_schema"
    )
    options: Options = Field(default_factory=Options)


class Filters(BaseModel):
    """The query of ``GET /api/v1/tasks``."""

    state: str | None = Field(None, description="only tasks in this state")
    task: str | None = Field(None, description="only tasks of this type")
    limit: int = Field(50, ge=1, le=200, description="at most this many tasks")
    cursor: str | None = Field(None, description="the next_cursor of the page before")


# -- answers ------------------------------------------------------------------------------------


def _absent_when_unset(schema: dict[str, Any]) -> None:
    # The answer leaves such a field out rather than sending null: no default in the schema.
    schema.pop("default", None)


class Answer(BaseModel):
    """Base of the answers' models: a field the code sends and the model lacks is an error."""

    model_config = ConfigDict(extra="forbid")


State = Literal["PENDING", "STARTED", "PROGRESS", "RETRY", "SUCCESS", "FAILURE", "REVOKED"]
Timestamp = Annotated[
    str,
    Field(
        pattern=r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$",
        description="UTC, ISO 8601 with milliseconds and Z",
        examples=["2026-11-21T20:31:07.412Z"],
    ),
]
TaskPath = Annotated[str, Field(pattern=r"^/api/v1/tasks/[0-9a-f-]{36}$")]


class Progress(Answer):
    """What a running task reported last (kept after it stopped)."""

    current: int
    total: int
    percent: float | None = Field(
        description="100 * current / total, one decimal; null if no total"
    )
    message: str


class TaskError(Answer):
    """Why the last attempt failed: the exception's type and message, never a traceback."""

    type: str
    message: str


class Links(Answer):
    """The task's own address, and the tasks it retries or that retried it."""

    self: TaskPath
    retry_of: TaskPath = Field(
        None, description="the task this one retries", json_schema_extra=_absent_when_unset
    )
    retried_by: TaskPath = Field(
        None, description="the task that resubmitted this one", json_schema_extra=_absent_when_unset
    )


class TaskSummary(Answer):
    """A task as a listing shows it: everything but its result and error."""

    id: str = Field(json_schema_extra={"format": "uuid"})
    task: str = Field(description="the task type's name")
    state: State = Field(description="SUCCESS, FAILURE and REVOKED are final")
    progress: Progress | None = Field(
        description="while PROGRESS, and the last one reported on RETRY and final states"
    )
    retries: int = Field(ge=0)
    created_at: Timestamp
    eta: Timestamp | None = Field(description="when its countdown lets it run; null without one")
    started_at: Timestamp | None
    finished_at: Timestamp | None = Field(description="set in final states only")
    links: Links


class TaskResource(TaskSummary):
    """A task: what ``GET /api/v1/tasks/{task_id}`` answers and every task route embeds."""

    result: Any = Field(description="the task's return value (any JSON), on SUCCESS only")
    error: TaskError | None = Field(description="on FAILURE, and on RETRY for the last attempt")


class Owner(Answer):
    """The key that submitted a task."""

    id: str = Field(description="the key's id, the part after erd_")
    name: str | None = Field(description="the key's name; null if the key is gone")


class ListedTask(TaskSummary):
    """A task in a listing: its summary (``GET`` the task for its result or error), and for
    an admin key whose it is."""

    owner: Owner | None = Field(
        None,
        description="admin keys only (absent for others); null for a task made without a key",
        json_schema_extra=_absent_when_unset,
    )


class TaskList(Answer):
    """A page of tasks, newest first."""

    items: list[ListedTask]
    next_cursor: str | None = Field(description="pass as cursor for the next page; null at the end")


class TaskType(Answer):
    """A task type that can be submitted by name."""

    name: str
    description: str
    queue: str = Field(description="where its jobs wait: TASK_ROUTES, its own, or TASK_QUEUE")
    params_schema: dict[str, Any] = Field(description="the JSON Schema its params must match")


class TaskTypeList(Answer):
    """Every task type, by name."""

    items: list[TaskType]


class ValidationErrorItem(Answer):
    """One thing wrong with a request: where, and what."""

    loc: list[str | int] = Field(description='e.g. ["params", "to", 0] or ["query", "limit"]')
    msg: str


class Problem(Answer):
    """Every error, as problem+json (RFC 9457)."""

    type: str = Field(description="always about:blank: the status says what happened")
    title: str = Field(description="the status's phrase")
    status: int = Field(ge=400, le=599)
    detail: str
    errors: list[ValidationErrorItem] = Field(
        None,
        description="what was not valid (422 and some 400s)",
        json_schema_extra=_absent_when_unset,
    )


class Worker(Answer):
    """A live worker, as its lease thread last described it."""

    name: str
    pool: str = Field(description="the pool's module, e.g. prefork")
    concurrency: int
    queues: list[str] = Field(description="the queues it consumes (-Q; without it, all of them)")
    active: int = Field(ge=0, description="tasks running")
    reserved: int = Field(ge=0, description="tasks prefetched, not yet running")
    pid: int
    started_at: Timestamp
    heartbeat_at: Timestamp


class WorkerList(Answer):
    """Workers whose heartbeat is fresh, by name."""

    items: list[Worker]


class Queue(Answer):
    """A queue Errand uses, how many messages wait in it, and who takes them."""

    name: str
    depth: int = Field(ge=0)
    task_types: list[str] = Field(description="the task types whose jobs go to it")
    workers: int = Field(ge=0, description="live workers that consume it (0: its jobs wait)")


class QueueList(Answer):
    """Every queue Errand uses: TASK_QUEUE and each task type's."""

    items: list[Queue]


class StreamToken(Answer):
    """A short-lived token for one task's events URL, for the key that asked."""

    token: str
    expires_in: int = Field(ge=1, description="seconds it is good for (STREAM_TOKEN_TTL)")
    events: str = Field(description="the events URL with the token in it, to open as it is")


class Health(Answer):
    """The process serves."""

    status: Literal["ok"]


class Ready(Answer):
    """The broker, the result store and at least one worker answer."""

    status: Literal["ready"]
    checks: dict[str, Literal["ok"]] = Field(
        description="each check by name: broker, result_store, workers"
    )
