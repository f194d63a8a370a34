"""Task types that exist only for the tests (loaded through TASK_MODULES)."""

from __future__ import annotations

import time
import uuid

import redis
from celery import current_task
from pydantic import Field

from app import store
from app.tasks.registry import Params, task_type

# Count once per run token, so that a count sent again (the reply was lost) counts once.
COUNT_ONCE = """
if redis.call('SET', KEYS[2], 1, 'NX', 'EX', 3600) then return redis.call('INCR', KEYS[1]) end
return tonumber(redis.call('GET', KEYS[1]))
"""


def count_run() -> int:
    """Count this run of the current task in Redis, so tests can see duplicates.

    Test instrumentation, not the job: it waits out a Redis that is hung or
    restarting (the fault tests do that) rather than failing the job.
    """
    task_id = current_task.request.id
    names = [f"test:runs:{task_id}", f"test:run-token:{task_id}:{uuid.uuid4()}"]
    give_up = time.monotonic() + 60
    while True:
        try:
            return int(store.client().eval(COUNT_ONCE, 2, *names))
        except redis.RedisError:
            if time.monotonic() > give_up:
                raise
            time.sleep(0.2)


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
