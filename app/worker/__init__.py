"""Celery, wired after Flask's documented pattern (``celery_init_app``).

Every task runs inside the Flask application context. A task that belongs to
a task type first checks its record (``begin``): a task whose submit never
completed, or that was cancelled, does not run.
"""

from __future__ import annotations

import logging
import os
import time

import redis
from celery import Celery, Task
from celery.app import trace
from celery.exceptions import Ignore, Reject
from flask import Flask
from kombu import Exchange, Queue
from kombu.transport import TRANSPORT_ALIASES

from app import store
from app.store import keys, records
from app.tasks import routing
from app.tasks.maintenance import prune_index
from app.tasks.registry import Cancelled
from app.worker import signals, webhooks
from app.worker.lease import Lease
from app.worker.results import run_started

log = logging.getLogger(__name__)


# Errand's Redis transport (app.worker.broker) for redis://, rediss:// and sentinel://
# URLs, by kombu's own aliases: the URL keeps its scheme for every tool that reads it (Flower).
TRANSPORT_ALIASES["redis"] = TRANSPORT_ALIASES["rediss"] = "app.worker.broker:Transport"
TRANSPORT_ALIASES["sentinel"] = "app.worker.broker:SentinelTransport"

# Celery logs a task's return value when it succeeds; results hold client data
# (addresses, whatever a team's task returns): log that it succeeded, and how fast.
trace.LOG_SUCCESS = "Task %(name)s[%(id)s] succeeded in %(runtime)ss"


def celery_init_app(app: Flask) -> Celery:
    """Create the Celery application for ``app`` and keep it in ``app.extensions``."""

    class FlaskTask(Task):
        errand_record = False

        def __call__(self, *args: object, **kwargs: object) -> object:
            with app.app_context():
                if self.errand_record and not self.request.called_directly:
                    begin(self)
                try:
                    return self.run(*args, **kwargs)
                except Cancelled:  # stopped at a progress report (threads, gevent, solo)
                    log.info("task %s was cancelled while it ran; stopped", self.request.id)
                    run_started.pop(self.request.id, None)
                    _tell_monitors(self, "task-revoked", terminated=True, signum=None)
                    raise

    celery_app = Celery(app.name, task_cls=FlaskTask)
    celery_app.config_from_object(app.config["CELERY"])
    conf = celery_app.conf
    # Every queue a task type uses, and the default one (Errand's own jobs): a worker
    # started without -Q consumes them all; -Q picks some. Priority is 0 to 9, higher
    # first, on both brokers; RabbitMQ honours it only on a queue declared with
    # x-max-priority (on Redis: app.worker.messages).
    task_types = app.extensions["errand.task_types"]
    redis_broker = conf.broker_url.startswith(store.SCHEMES)
    arguments = None if redis_broker else {"x-max-priority": 9}
    conf.task_queues = [
        Queue(name, Exchange(name), routing_key=name, queue_arguments=arguments)
        for name in routing.queues(task_types, conf.task_default_queue)
    ]
    # apply_async, send_task and canvas (chains, chords) send each type to its queue.
    conf.task_routes = {name: {"queue": t.queue} for name, t in task_types.items()}
    celery_app.conf.beat_schedule = {
        "prune-task-index": {"task": prune_index.name, "schedule": app.config["PRUNE_INTERVAL"]},
    }
    # Errand's own tasks are registered by import: prune_index, webhooks.deliver_webhook.
    # Beat keeps its entries and its lock in Redis (celery-redbeat): app.worker.schedules.
    lock_timeout = app.config["BEAT_LOCK_TIMEOUT"]
    conf.beat_scheduler = "app.worker.schedules:Scheduler"
    conf.beat_max_loop_interval = max(1, lock_timeout // 5)  # a tick renews the lock
    conf.redbeat_redis_url = app.config["REDIS_URL"]
    conf.redbeat_key_prefix = keys.REDBEAT_PREFIX
    conf.redbeat_lock_timeout = lock_timeout
    timeout = app.config["REDIS_TIMEOUT"]
    conf.redbeat_redis_options = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry_period": lock_timeout,  # a Redis blip is retried while the lock would hold
    }
    if conf.redbeat_redis_url.startswith("sentinel://"):  # redbeat's own name for it
        addresses, params = store.sentinels(conf.redbeat_redis_url)
        conf.redbeat_redis_url = "redis-sentinel://"
        conf.redbeat_redis_options.update(
            sentinels=addresses,
            service_name=app.config["REDIS_SENTINEL_MASTER"],
            sentinel_kwargs=app.config["REDIS_SENTINEL_KWARGS"],
            **params,
        )
    celery_app.steps["worker"].add(Lease)
    celery_app.flask_app = app  # type: ignore[attr-defined]
    celery_app.set_default()
    signals.connect(app)
    app.extensions["celery"] = celery_app
    return celery_app


def begin(task: Task) -> None:
    """Let the task run only if its record exists and holds no cancel; store STARTED."""
    task_id = task.request.id
    deadline_us = int(getattr(task.request, "errand_deadline", 0) or 0)
    backend = task.backend
    started = backend.encode(
        {
            "status": "STARTED",
            "result": {"pid": os.getpid(), "hostname": task.request.hostname},
            "traceback": None,
            "children": [],
            "date_done": None,
            "task_id": task_id,
        }
    )
    ttl = int(backend.expires or 0)
    while True:
        try:
            verdict = records.begin(store.client(), task_id, deadline_us, started, ttl)
        except redis.RedisError as exc:
            # The record store is unreachable: put the message back rather
            # than run a task whose cancel we cannot see, or lose it.
            log.warning("task %s: record store unreachable (%s); requeued", task_id, exc)
            time.sleep(1)
            raise Reject(str(exc), requeue=True) from exc
        if verdict == "run":
            run_started[task_id] = time.monotonic()
            log.info("task %s started", task.name)
            return
        if verdict == "done":
            log.info("task %s had succeeded already (a redelivery); not run again", task_id)
            webhooks.queue_if_waiting(task.app, task_id)
            _tell_monitors(task, "task-succeeded", result="(succeeded before)", runtime=0)
            raise Ignore()
        if verdict == "revoked":
            log.info("task %s was cancelled before it started", task_id)
            task.backend.mark_as_revoked(task_id, "cancelled", request=task.request)
            webhooks.queue_if_waiting(task.app, task_id)
            _tell_monitors(task, "task-revoked", terminated=False, signum=None, expired=False)
            raise Ignore()
        if verdict == "orphan":
            log.warning(
                "task %s has no Errand record: not submitted through the API, "
                "or its submit failed; dropped",
                task_id,
            )
            task.backend.forget(task_id)
            _tell_monitors(task, "task-revoked", terminated=False, signum=None, expired=False)
            raise Ignore()
        time.sleep(0.02)  # 'wait': the API is writing the record right now


def celery_of(app: Flask) -> Celery:
    """The Celery application created for ``app``."""
    celery_app: Celery = app.extensions["celery"]
    return celery_app


def _tell_monitors(task: Task, event: str, **fields: object) -> None:
    """Send a task event (Flower's view of the task) where Errand decided its end itself."""
    if task.app.conf.worker_send_task_events:
        try:
            task.send_event(event, retry=False, **fields)
        except Exception as exc:  # a monitor's view is not worth failing the task for
            log.warning("could not send %s for %s: %s", event, task.request.id, exc)
