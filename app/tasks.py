"""Built-in task types and Errand's own periodic jobs."""

from __future__ import annotations

import logging
import time

from celery import shared_task
from flask import current_app
from pydantic import Field

from app import records
from app.extensions import store
from app.tasktypes import Params, report_progress, task_type

log = logging.getLogger(__name__)


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


@shared_task(name="errand.prune_index", ignore_result=True)
def prune_index() -> int:
    """Drop index entries whose task records have expired (run by celery beat)."""
    client = store()
    cutoff = time.time() - current_app.config["TASK_RETENTION"]
    indexes = [records.INDEX, *(k.decode() for k in client.scan_iter(f"{records.INDEX}:*"))]
    removed = records.prune(client, cutoff, indexes)
    log.info("pruned %d expired entries from the task index", removed)
    return removed
