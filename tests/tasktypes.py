"""Task types that exist only for the tests (loaded through TASK_MODULES)."""

from __future__ import annotations

import time

from celery import current_task
from pydantic import Field

from app import store
from app.tasks.registry import Params, task_type


def count_run() -> int:
    """Count this run of the current task in Redis, so tests can see duplicates."""
    return int(store.client().incr(f"test:runs:{current_task.request.id}"))


class Sleep(Params):
    seconds: float = Field(ge=0, le=120)


@task_type("test.sleep", Sleep)
def sleep(params: Sleep) -> dict[str, int]:
    """Count the run, then sleep."""
    runs = count_run()
    time.sleep(params.seconds)
    return {"runs": runs}


class Echo(Params):
    value: int
    fail: bool = False


@task_type("test.echo", Echo)
def echo(params: Echo) -> int:
    """Return the value, or fail with ValueError when asked to."""
    count_run()
    if params.fail:
        raise ValueError(f"asked to fail with {params.value}")
    return params.value


class Flaky(Params):
    failures: int = Field(ge=0, le=3)


@task_type(
    "test.flaky",
    Flaky,
    autoretry_for=(ConnectionError,),
    max_retries=3,
    default_retry_delay=1,
    retry_backoff=False,
)
def flaky(params: Flaky) -> dict[str, int]:
    """Fail with ConnectionError on the first ``failures`` runs, then succeed."""
    runs = count_run()
    if runs <= params.failures:
        raise ConnectionError(f"temporary failure {runs}")
    return {"runs": runs}


class Add(Params):
    value: int
    fail: bool = False
    seconds: float = Field(0, ge=0, le=30)


@task_type("test.add", Add, accepts_previous=True)
def add(params: Add, previous: object = None) -> dict[str, object]:
    """Sleep, then add the value to the previous result (or to the sum of a group's)."""
    count_run()
    time.sleep(params.seconds)
    if params.fail:
        raise ValueError(f"asked to fail with {params.value}")
    found = previous if isinstance(previous, list) else [previous]
    total = sum(p["total"] for p in found if isinstance(p, dict)) + params.value
    return {"total": total, "previous": previous}


task_types = [sleep, echo, flaky, add]
