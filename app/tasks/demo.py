"""``demo.progress``: a job to build frontends and tests against."""

from __future__ import annotations

import time

from pydantic import Field

from app.tasks.registry import Params, report_progress, task_type


class DemoProgress(Params):
    steps: int = Field(ge=1, le=1000, description="how many steps to run")
    delay: float = Field(ge=0, le=10, description="seconds to wait at each step")


@task_type("demo.progress", DemoProgress)
def demo_progress(params: DemoProgress) -> dict[str, int]:
    """Count through steps with a delay each, reporting PROGRESS at every step."""
    for step in range(1, params.steps + 1):
        time.sleep(params.delay)
        report_progress(step, params.steps, f"step {step} of {params.steps}")
    return {"steps": params.steps}


task_types = [demo_progress]
