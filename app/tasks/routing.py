"""Which queue each task type's jobs wait in: ``TASK_ROUTES``, then its declaration, then
``TASK_QUEUE``.

A team sends CPU-bound and I/O-bound task types to different queues, each consumed by
workers with the pool that suits it (``celery worker -P gevent -Q io``). The result is the
registry with every ``TaskType.queue`` set; the API pushes each job onto its type's queue,
and Celery's ``task_routes`` (``app.worker``) sends it there on every other path too
(``apply_async``, ``send_task``, canvas).
"""

from __future__ import annotations

import dataclasses
from fnmatch import fnmatchcase

from app.tasks.registry import Registry
from config import ConfigError, queue_name


def resolve(registry: Registry, routes: list[tuple[str, str]], default: str) -> Registry:
    """The registry with each type's queue settled; a route that moves no type is an error.

    The first route whose pattern matches a type's name wins (``email.*`` matches
    ``email.send``), as in Celery's ``task_routes``.
    """
    used: set[str] = set()
    settled: Registry = {}
    for name, task_type in registry.items():
        queue = task_type.queue or default
        queue_name(f"the queue of task type {name}", queue)
        for pattern, routed in routes:
            if fnmatchcase(name, pattern):
                queue = routed
                used.add(pattern)
                break
        settled[name] = dataclasses.replace(task_type, queue=queue)
    unused = [pattern for pattern, _ in routes if pattern not in used]
    if unused:  # a typo would otherwise leave jobs where they were, silently
        raise ConfigError(f"TASK_ROUTES: {', '.join(unused)} routes no task type")
    return settled


def queues(registry: Registry, default: str) -> list[str]:
    """Every queue Errand uses: ``default`` (its own jobs) and each task type's."""
    return sorted({default, *(t.queue or default for t in registry.values())})
