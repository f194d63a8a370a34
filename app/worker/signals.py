"""Every Celery signal Errand listens to, connected in one place (``connect``)."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

import gevent
from celery.signals import setup_logging, worker_init, worker_shutting_down
from flask import Flask
from gevent import monkey

from app import log as log_setup
from app.worker.lease import release

log = logging.getLogger(__name__)


def connect(app: Flask) -> None:
    """Connect Errand's handlers: logging and the warm-shutdown grace.

    Task states and run times are counted where they are stored (``app.worker.results``).
    """

    @setup_logging.connect(weak=False, dispatch_uid="errand-logging")
    def keep_errand_logging(loglevel: str | int | None = None, **kwargs: Any) -> None:
        # Connected, this stops Celery from replacing Errand's handler and format.
        log_setup.configure(app.config["LOG_LEVEL"], app.config["LOG_FORMAT"])

    started: dict[str, Any] = {}

    @worker_init.connect(weak=False, dispatch_uid="errand-worker")
    def remember_worker(sender: Any = None, **kwargs: Any) -> None:
        started["worker"] = sender

    @worker_shutting_down.connect(weak=False, dispatch_uid="errand-shutdown-grace")
    def limit_warm_shutdown(sig: str = "", how: str = "", **kwargs: Any) -> None:
        # A warm shutdown (SIGTERM, a deploy) waits for running tasks; past the
        # grace they are stopped and their messages go back to the queue (late
        # acks), to run again on another worker.
        if how != "Warm":
            return
        grace = app.config["WORKER_SHUTDOWN_GRACE"]
        log.info("warm shutdown: running tasks have %ss to finish", grace)
        later(grace, lambda: past_grace(started.get("worker"), grace))


def later(seconds: float, action: Callable[[], None]) -> None:
    """Run ``action`` after ``seconds`` on a timer thread, or a greenlet under gevent.

    gevent's patched threads cannot start inside a signal handler (it runs in the
    event loop: BlockingSwitchOutError).
    """
    if monkey.is_module_patched("threading"):
        gevent.spawn_later(seconds, action)
        return
    timer = threading.Timer(seconds, action)
    timer.daemon = True
    timer.start()


def past_grace(worker: Any, grace: float) -> None:
    """Stop the tasks still running once the grace is over, handing their messages back.

    Prefork's cold shutdown (SIGQUIT) stops its children, and their messages go back.
    The threads, gevent and solo pools cannot stop a running task: threads would run
    on past any grace, and gevent's cold shutdown kills the task's greenlet and then
    acknowledges its message as if it had succeeded, losing the job (Celery 5.7).
    There the worker gives up the leases of the messages it holds, so that they run
    again on another worker, and exits at once.
    """
    module = getattr(getattr(worker, "pool_cls", None), "__module__", "")
    if worker is None or module.endswith(".prefork"):
        os.kill(os.getpid(), signal.SIGQUIT)
        return
    try:
        count = release(worker)
        log.warning("grace of %ss over: %d held messages given back; exiting", grace, count)
    except Exception as exc:  # they come back after VISIBILITY_TIMEOUT, as for a crash
        log.warning("grace of %ss over; could not hand messages back: %s; exiting", grace, exc)
    logging.shutdown()
    os._exit(1)
