"""Every Celery signal Errand listens to, connected in one place (``connect``)."""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

from celery.signals import setup_logging, worker_shutting_down
from flask import Flask

from app import log as log_setup

log = logging.getLogger(__name__)


def connect(app: Flask) -> None:
    """Connect Errand's handlers: logging and the warm-shutdown grace.

    Task states and run times are counted where they are stored (``app.worker.results``).
    """

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
