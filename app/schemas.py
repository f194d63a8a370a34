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


def callback_url_field(what: str, **extra: Any) -> Any:
    """A ``callback_url``: where ``what`` is POSTed, checked as a submit's is."""
    return Field(
        None,
        max_length=2048,
        description="http or https, no user name or password: " + what + " is POSTed here, "
        "signed (see the Errand-Signature header); no loopback, private, link-local, "
        "multicast or reserved address unless WEBHOOK_ALLOW_PRIVATE",
        json_schema_extra=extra.pop("json_schema_extra", {"format": "uri"}),
        **extra,
    )


class Submission(BaseModel):
    """The body of ``POST /api/v1/tasks``."""

    model_config = ConfigDict(extra="forbid", strict=True)
    task: str = Field(description="a name from /api/v1/task-types")
    params: dict[str, Any] = Field(
        default_factory=dict, description="validated against the task type's params_schema"
    )
    options: Options = Field(default_factory=Options)
    callback_url: str | None = Field(
        None,
        max_length=2048,
        description="http or https, no user name or password: the final task resource is "
        "POSTed here, signed (see the Errand-Signature header); no loopback, private, "
        "link-local, multicast or reserved address unless WEBHOOK_ALLOW_PRIVATE",
        json_schema_extra={"format": "uri"},
    )


class WorkflowStep(BaseModel):
    """One step of a workflow: a task, validated as a submit is."""

    model_config = ConfigDict(extra="forbid", strict=True)
    task: str = Field(description="a name from /api/v1/task-types")
    params: dict[str, Any] = Field(
        default_factory=dict, description="validated against the task type's params_schema"
    )
    options: Options = Field(default_factory=Options)


class WorkflowSubmission(BaseModel):
    """The body of ``POST /api/v1/workflows``: a chain, or a group with an optional final step."""

    model_config = ConfigDict(extra="forbid", strict=True)
    chain: list[WorkflowStep] = Field(
        None,
        min_length=1,
        description="steps run one after another; each gets the previous result if its type "
        "accepts_previous. Exactly one of chain and group.",
        json_schema_extra=lambda s: s.pop("default", None),
    )
    group: list[WorkflowStep] = Field(
        None,
        min_length=1,
        description="steps run at once. Exactly one of chain and group.",
        json_schema_extra=lambda s: s.pop("default", None),
    )
    then: WorkflowStep = Field(
        None,
        description="with a group only: runs after every group step succeeded, with the list "
        "of their results",
        json_schema_extra=lambda s: s.pop("default", None),
    )
    callback_url: str | None = callback_url_field(
        "the final workflow resource (SUCCESS, FAILURE or REVOKED), once,"
    )


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
WorkflowPath = Annotated[str, Field(pattern=r"^/api/v1/workflows/[0-9a-f-]{36}$")]
SchedulePath = Annotated[str, Field(pattern=r"^/api/v1/schedules/[a-z0-9_-]{1,64}$")]


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
    workflow: WorkflowPath = Field(
        None,
        description="the workflow this task is a step of",
        json_schema_extra=_absent_when_unset,
    )
    schedule: SchedulePath = Field(
        None,
        description="the schedule this task is a run of",
        json_schema_extra=_absent_when_unset,
    )


class Callback(Answer):
    """Where the task's webhook stands (its ``callback_url`` given at submit)."""

    url: str
    state: Literal["pending", "delivering", "delivered", "failed"] = Field(
        description="pending until the task is final and between attempts; delivered on a "
        "2xx; failed once attempts ran out or the receiver refused (other 4xx, redirects)"
    )
    attempts: int = Field(ge=0, description="attempts made (at most WEBHOOK_MAX_ATTEMPTS)")
    last_status: int | None = Field(description="the receiver's last HTTP status, if it answered")
    last_error: str | None = Field(description="why the last attempt failed")
    delivered_at: Timestamp | None


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
    callback: Callback | None = Field(description="null when the submit had no callback_url")


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
    accepts_previous: bool = Field(
        description="in a workflow, it gets the previous step's result (a group's final step: "
        "the list of results)"
    )


class TaskTypeList(Answer):
    """Every task type, by name."""

    items: list[TaskType]


class TaskLink(Answer):
    """A task's own address."""

    self: TaskPath


class WorkflowTask(Answer):
    """A step of a workflow, in short: GET its links.self for all of it."""

    id: str = Field(json_schema_extra={"format": "uuid"})
    task: str | None = Field(description="the task type's name")
    state: State
    links: TaskLink


class WorkflowLinks(Answer):
    """The workflow's own address."""

    self: WorkflowPath


class WorkflowResource(Answer):
    """A workflow: what ``GET /api/v1/workflows/{workflow_id}`` answers."""

    id: str = Field(json_schema_extra={"format": "uuid"})
    kind: Literal["chain", "group"]
    state: State = Field(
        description="PENDING until a step starts; STARTED (PROGRESS if a step reports it) while "
        "any runs; SUCCESS when every step did; FAILURE when a step failed; REVOKED when it "
        "was cancelled (or a step was)"
    )
    progress: Progress = Field(description="steps final / all steps")
    tasks: list[WorkflowTask] = Field(description="every step in order; a group's then step last")
    result: Any = Field(
        description="on SUCCESS: the last step's result (a group without then: every result)"
    )
    created_at: Timestamp
    cancelled_at: Timestamp | None = Field(description="when it was cancelled")
    links: WorkflowLinks
    callback: Callback | None = Field(
        description="where its webhook stands; null when it was made without a callback_url"
    )


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


# -- schedules ----------------------------------------------------------------------------------

CRONTAB = Field(
    None,
    max_length=100,
    description="five fields, minute hour day-of-month month day-of-week (0-6, 0 is Sunday, "
    "or mon-sun), read in timezone: e.g. '0 8 * * *' is every day at 8:00",
    examples=["0 8 * * mon-fri"],
)
TIMEZONE = Field(
    None, max_length=64, description="an IANA name for the crontab (default UTC)", examples=["UTC"]
)
INTERVAL = Field(
    None,
    ge=1,
    le=365 * 24 * 3600,
    description="seconds between runs, SCHEDULE_MIN_INTERVAL to a year",
)


class ScheduleOptions(BaseModel):
    """How each run goes: a submit's options, but no countdown."""

    model_config = ConfigDict(extra="forbid", strict=True)
    priority: int | None = Field(
        None, ge=0, le=9, description="0 to 9, higher runs first; none counts as 0"
    )


class ScheduleCreate(BaseModel):
    """The body of ``POST /api/v1/schedules``: a crontab or an interval, not both."""

    model_config = ConfigDict(extra="forbid", strict=True)
    task: str = Field(max_length=200, description="a name from /api/v1/task-types")
    params: dict[str, Any] = Field(
        default_factory=dict, description="validated against the task type's params_schema"
    )
    options: ScheduleOptions = Field(default_factory=ScheduleOptions)
    crontab: str | None = CRONTAB
    timezone: str | None = TIMEZONE
    interval: int | None = INTERVAL
    paused: bool = Field(False, description="a paused schedule makes no runs")
    callback_url: str | None = callback_url_field("each run's final task resource")


def _removable_uri(schema: dict[str, Any]) -> None:
    _absent_when_unset(schema)
    schema["format"] = "uri"


class SchedulePatch(BaseModel):
    """The body of ``PATCH /api/v1/schedules/{schedule_id}``: only the fields to change.

    A crontab replaces an interval and the other way round; a new timing, or a resume,
    sets the schedule going from now."""

    model_config = ConfigDict(extra="forbid", strict=True)
    task: str = Field(None, max_length=200, json_schema_extra=_absent_when_unset)
    params: dict[str, Any] = Field(None, json_schema_extra=_absent_when_unset)
    options: ScheduleOptions = Field(None, json_schema_extra=_absent_when_unset)
    crontab: str = Field(None, max_length=100, json_schema_extra=_absent_when_unset)
    timezone: str = Field(None, max_length=64, json_schema_extra=_absent_when_unset)
    interval: int = Field(None, ge=1, le=365 * 24 * 3600, json_schema_extra=_absent_when_unset)
    paused: bool = Field(None, json_schema_extra=_absent_when_unset)
    callback_url: str | None = Field(
        None,
        max_length=2048,
        description="as at create; null removes it (runs made later have no webhook)",
        json_schema_extra=_removable_uri,
    )


class ScheduleFilters(BaseModel):
    """The query of ``GET /api/v1/schedules``."""

    limit: int = Field(50, ge=1, le=200, description="at most this many schedules")
    cursor: str | None = Field(None, description="the next_cursor of the page before")


class ScheduleLinks(Answer):
    """The schedule's own address, and its last run's task."""

    self: SchedulePath
    last_task: TaskPath = Field(
        None, description="the task of the last run", json_schema_extra=_absent_when_unset
    )


class ScheduleResource(Answer):
    """A schedule: what ``GET /api/v1/schedules/{schedule_id}`` answers."""

    id: str = Field(description="a UUID, or a name from SCHEDULES_FILE")
    task: str
    params: dict[str, Any]
    options: dict[str, Any] = Field(description="as sent: priority, if any")
    crontab: str | None = Field(description="null for an interval schedule")
    timezone: str | None = Field(description="the crontab's time zone; null without a crontab")
    interval: int | None = Field(description="seconds; null for a crontab schedule")
    paused: bool
    source: Literal["api", "file"] = Field(
        description="file: declared in SCHEDULES_FILE (admin keys see it; change it there)"
    )
    created_at: Timestamp
    next_run_at: Timestamp | None = Field(
        description="when beat makes the next run (now, if it is due); null while paused"
    )
    last_run_at: Timestamp | None = Field(description="when the last run was submitted")
    last_error: str | None = Field(
        description="why the last due run was not made (the owner's in-flight cap, a revoked "
        "key); cleared by the next run that is made"
    )
    callback_url: str | None = Field(
        description="each run's final task resource is POSTed here; null without one"
    )
    links: ScheduleLinks


class ScheduleList(Answer):
    """A page of schedules, oldest first."""

    items: list[ScheduleResource]
    next_cursor: str | None = Field(description="pass as cursor for the next page; null at the end")
