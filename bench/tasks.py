"""A task type for the benchmarks (``TASK_MODULES=bench.tasks``): it does nothing."""

from __future__ import annotations

from app.tasks.registry import Params, task_type


class Nothing(Params):
    pass


@task_type("bench.noop", Nothing)
def noop(params: Nothing) -> None:
    """Do nothing: what is measured is everything around the task."""


task_types = [noop]
