"""Task types: the jobs a client may submit by name.

One declaration gives a task type its Celery task, its validation and the JSON
Schema listed at ``/api/v1/task-types``; a module lists its types in
``task_types``, and ``build`` makes the registry from the modules named::

    class Resize(Params):
        image_url: HttpUrl
        width: int = Field(ge=1, le=4096)

    @task_type("images.resize", Resize, max_retries=3)
    def resize(params: Resize) -> dict:
        ...
        return {"width": params.width}

    task_types = [resize]

In a workflow (``POST /api/v1/workflows``) a step after another gets that
step's result only if its type says ``accepts_previous=True``: the function is
then called as ``func(params, previous=...)``, with the previous step's return
value (a list of every result for a group's final step), or None when the
task was submitted on its own. Other types run after the step before them and
never see its result.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from celery import Task, current_task, shared_task
from celery.exceptions import Ignore
from pydantic import BaseModel, ConfigDict, ValidationError

from app.errors import Unprocessable

P = TypeVar("P", bound=BaseModel)


def validation_errors(
    exc: ValidationError, prefix: tuple[str | int, ...] = ()
) -> list[dict[str, Any]]:
    """Pydantic's errors as the contract's ``errors``: where, and a plain message."""
    return [
        {"loc": [*prefix, *e["loc"]], "msg": e["msg"].removeprefix("Value error, ")}
        for e in exc.errors(include_url=False, include_input=False)
    ]


class InvalidParams(ValueError):
    """A message reached a worker with params its task type does not accept."""


class Params(BaseModel):
    """Base of every params model: JSON types only, unknown fields rejected."""

    model_config = ConfigDict(extra="forbid", strict=True)


@dataclass(frozen=True)
class TaskType:
    """A submittable job: its name, what it does, its params model and its Celery task."""

    name: str
    description: str
    params: type[BaseModel]
    task: Task
    # Checks that need more than the params model (e.g. rendering templates for every
    # recipient), run at submit: a list of errors ({"loc", "msg"}), empty when all is well.
    check: Callable[[Any], list[dict[str, Any]]] | None = None
    # In a workflow, called with the previous step's result as ``previous=``.
    accepts_previous: bool = False
    # The queue its messages go to: as declared (None: TASK_QUEUE) until
    # ``app.tasks.routing.resolve`` settles it, TASK_ROUTES first.
    queue: str | None = None

    def validate(self, raw: dict[str, Any]) -> BaseModel:
        """The params of a submit validated and checked (``check``), or a 422 saying where."""
        try:
            params = self.params.model_validate(raw)
        except ValidationError as exc:
            raise Unprocessable(
                f"params are not valid for {self.name}", validation_errors(exc, ("params",))
            ) from None
        if self.check is not None:
            problems = self.check(params)
            if problems:
                raise Unprocessable(f"params are not valid for {self.name}", problems)
        return params

    def schema(self) -> dict[str, Any]:
        """The task type as ``/api/v1/task-types`` lists it."""
        return {
            "name": self.name,
            "description": self.description,
            "queue": self.queue,
            "params_schema": self.params.model_json_schema(),
            "accepts_previous": self.accepts_previous,
        }


Registry = dict[str, TaskType]


def task_type(
    name: str,
    params: type[P],
    check: Callable[[P], list[dict[str, Any]]] | None = None,
    accepts_previous: bool = False,
    queue: str | None = None,
    **celery_options: Any,
) -> Callable[[Callable[..., Any]], TaskType]:
    """Declare a task type from a function that takes its validated params.

    ``check``, if given, runs at submit after the params validated (see ``TaskType``);
    ``accepts_previous``: the function takes a workflow's previous result as ``previous=``.
    ``queue`` names the queue its jobs wait in (default: ``TASK_QUEUE``), so that
    CPU-bound and I/O-bound types can go to differently pooled workers;
    ``TASK_ROUTES`` overrides it per deploy.
    """

    def declare(func: Callable[..., Any]) -> TaskType:
        def run(self: Task, *args: Any) -> Any:
            # Celery's chain and chord put the previous result before the params.
            *before, raw = args
            # Validated again, as nothing from the broker is trusted; a check that
            # costs much and is repeated where the work is done may skip itself here.
            try:
                checked = params.model_validate(raw, context={"worker": True})
            except ValidationError as exc:  # say where, never the values (they are logged)
                places = ", ".join(".".join(map(str, e["loc"])) or "params" for e in exc.errors())
                raise InvalidParams(f"params are not valid for {name}: {places}") from None
            if accepts_previous:
                return func(checked, previous=before[0] if before else None)
            return func(checked)

        run.__name__ = func.__name__
        run.__doc__ = func.__doc__
        task = shared_task(name=name, bind=True, errand_record=True, **celery_options)(run)
        description = (func.__doc__ or "").strip().splitlines()[0] if func.__doc__ else ""
        return TaskType(name, description, params, task, check, accepts_previous, queue)

    return declare


def build(modules: Iterable[str]) -> Registry:
    """The registry of every task type the named modules list in ``task_types``."""
    registry: Registry = {}
    for name in modules:
        module = importlib.import_module(name)
        declared = getattr(module, "task_types", None)
        if declared is None:
            raise ImportError(f"{name} lists no task_types")
        for task_type in declared:
            if task_type.name in registry:
                raise ValueError(f"task type {task_type.name} is declared twice")
            registry[task_type.name] = task_type
    return registry


class Cancelled(Ignore):
    """The running task was cancelled: raised by ``report_progress``, so the task stops there.

    Under the prefork pool a cancel stops the task's child process at once; the
    threads, gevent and solo pools cannot stop a running task from outside, so
    it stops at its next progress report. Celery ignores the task (its state
    stays ``REVOKED``, as the cancel stored it) and acknowledges its message.
    """


def report_progress(current: int, total: int, message: str = "") -> None:
    """Store the running task's progress as Celery's ``PROGRESS`` state.

    Raises ``Cancelled`` if the task was cancelled meanwhile (the result store
    refuses every state but ``REVOKED`` once a cancel is recorded); let it
    propagate. With task events on, monitors hear it too (Flower shows
    ``PROGRESS``, a custom state).
    """
    meta = {"current": current, "total": total, "message": message}
    current_task.update_state(state="PROGRESS", meta=meta)
    if current_task.app.conf.worker_send_task_events:
        with contextlib.suppress(Exception):  # a monitor's view is not worth failing for
            current_task.send_event("task-progress", retry=False, **meta)
