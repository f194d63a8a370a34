"""Celery wiring, after Flask's documented pattern (``celery_init_app``).

Every task runs inside the Flask application context. A task that belongs to
a task type first checks its record: a task whose submit never completed, or
that was cancelled, does not run.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any

import redis
from celery import Celery, Task
from celery.exceptions import Ignore, Reject
from celery.signals import setup_logging, worker_shutting_down
from flask import Flask

from app import log as log_setup
from app import records
from app.extensions import store
from app.lease import Lease

log = logging.getLogger(__name__)


def celery_init_app(app: Flask) -> Celery:
    """Create the Celery application for ``app`` and keep it in ``app.extensions``."""

    class FlaskTask(Task):
        errand_record = False

        def __call__(self, *args: object, **kwargs: object) -> object:
            with app.app_context():
                if self.errand_record and not self.request.called_directly:
                    begin(self)
                return self.run(*args, **kwargs)

    @setup_logging.connect(weak=False, dispatch_uid="errand-logging")
    def keep_errand_logging(loglevel: str | int | None = None, **kwargs: Any) -> None:
        # Connected, this stops Celery from replacing Errand's handler and format.
        log_setup.configure(app.config["LOG_LEVEL"], app.config["LOG_FORMAT"])

    @worker_shutting_down.connect(weak=False, dispatch_uid="errand-shutdown-grace")
    def limit_warm_shutdown(sig: str = "", how: str = "", **kwargs: Any) -> None:
        # A warm shutdown (SIGTERM, a deploy) waits for running tasks; past the
        # grace it turns cold: tasks are stopped and their messages go back to
        # the queue (late acks), to run again on another worker.
        if how != "Warm":
            return
        grace = app.config["WORKER_SHUTDOWN_GRACE"]
        log.info("warm shutdown: running tasks have %ss to finish", grace)
        timer = threading.Timer(grace, os.kill, (os.getpid(), signal.SIGQUIT))
        timer.daemon = True
        timer.start()

    celery_app = Celery(app.name, task_cls=FlaskTask)
    celery_app.config_from_object(app.config["CELERY"])
    celery_app.steps["worker"].add(Lease)
    celery_app.flask_app = app  # type: ignore[attr-defined]
    celery_app.set_default()
    app.extensions["celery"] = celery_app
    return celery_app


def begin(task: Task) -> None:
    """Let the task run only if its record exists and holds no cancel."""
    task_id = task.request.id
    deadline = int(getattr(task.request, "errand_deadline", 0) or 0)
    while True:
        try:
            verdict = records.begin(store(), task_id, deadline)
        except redis.RedisError as exc:
            # The record store is unreachable: put the message back rather
            # than run a task whose cancel we cannot see, or lose it.
            log.warning("task %s: record store unreachable (%s); requeued", task_id, exc)
            time.sleep(1)
            raise Reject(str(exc), requeue=True) from exc
        if verdict == "run":
            log.info("task %s started", task.name)
            return
        if verdict == "revoked":
            log.info("task %s was cancelled before it started", task_id)
            task.backend.mark_as_revoked(task_id, "cancelled", request=task.request)
            raise Ignore()
        if verdict == "orphan":
            log.warning("task %s has no record: its submit failed; dropped", task_id)
            task.backend.forget(task_id)
            raise Ignore()
        time.sleep(0.02)  # 'wait': the API is writing the record right now


def celery_of(app: Flask) -> Celery:
    """The Celery application created for ``app``."""
    celery_app: Celery = app.extensions["celery"]
    return celery_app


def task_headers(**values: Any) -> dict[str, Any]:
    """Message headers that reach ``task.request`` in the worker."""
    return {f"errand_{name}": value for name, value in values.items()}
