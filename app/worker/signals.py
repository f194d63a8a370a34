"""Every Celery signal Errand listens to, connected in one place (``connect``)."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any

import redis
from celery.signals import setup_logging, task_postrun, task_prerun, worker_shutting_down
from flask import Flask

from app import log as log_setup
from app import metrics

log = logging.getLogger(__name__)


def connect(app: Flask) -> None:
    """Connect Errand's handlers: logging, the warm-shutdown grace, task run times."""
    started: dict[str, float] = {}

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

    @task_prerun.connect(weak=False, dispatch_uid="errand-metrics-prerun")
    def start_clock(task_id: str, task: Any, **kwargs: Any) -> None:
        if getattr(task, "errand_record", False):
            started[task_id] = time.monotonic()

    @task_postrun.connect(weak=False, dispatch_uid="errand-metrics-postrun")
    def stop_clock(task_id: str, task: Any, state: str | None = None, **kwargs: Any) -> None:
        began = started.pop(task_id, None)
        if began is None or state not in {"SUCCESS", "FAILURE", "RETRY"}:
            return
        try:
            metrics.record_runtime(
                app.extensions["errand.redis"], task.name, time.monotonic() - began
            )
        except redis.RedisError as exc:
            log.warning("could not count the run time of %s: %s", task_id, exc)
