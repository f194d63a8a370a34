"""``demo.progress``: a job to build frontends and tests against, in every state it can reach."""

from __future__ import annotations

import time

from celery import current_task
from pydantic import Field, model_validator

from app.tasks.registry import Params, report_progress, task_type


class DemoError(Exception):
    """The failure ``demo.progress`` was asked for."""


class DemoProgress(Params):
    steps: int = Field(ge=1, le=1000, description="how many steps to run")
    delay: float = Field(ge=0, le=10, description="seconds to wait at each step")
    fail_at: int | None = Field(
        None, ge=1, le=1000, description="fail (FAILURE) when this step is reached"
    )
    retry_at: int | None = Field(
        None,
        ge=1,
        le=1000,
        description="on the first attempt, go to RETRY at this step; the retry succeeds",
    )

    @model_validator(mode="after")
    def steps_exist(self) -> DemoProgress:
        for name in ("fail_at", "retry_at"):
            value = getattr(self, name)
            if value is not None and value > self.steps:
                raise ValueError(f"{name} must be a step, 1 to {self.steps}")
        return self


@task_type("demo.progress", DemoProgress, max_retries=1)
def demo_progress(params: DemoProgress) -> dict[str, int]:
    """Count through steps with a delay each, reporting PROGRESS; fail or retry if asked."""
    for step in range(1, params.steps + 1):
        time.sleep(params.delay)
        if step == params.fail_at:
            raise DemoError(f"asked to fail at step {step} of {params.steps}")
        if step == params.retry_at and current_task.request.retries == 0:
            error = DemoError(f"asked to retry at step {step} of {params.steps}")
            raise current_task.retry(exc=error, countdown=max(params.delay, 0.5))
        report_progress(step, params.steps, f"step {step} of {params.steps}")
    return {"steps": params.steps}


class DemoSum(Params):
    add: float = Field(0, ge=-1e9, le=1e9, description="a number to add to the previous result")


@task_type("demo.sum", DemoSum, accepts_previous=True)
def demo_sum(params: DemoSum, previous: object = None) -> float:
    """Add a number to the previous workflow step's result (or to the sum of a group's results)."""
    found = previous if isinstance(previous, list) else [previous]
    numbers = [n for n in found if isinstance(n, int | float) and not isinstance(n, bool)]
    return sum(numbers) + params.add


task_types = [demo_progress, demo_sum]
