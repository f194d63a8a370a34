"""Leases on the messages a live worker holds, and the worker's heartbeat.

On Redis, kombu keeps each delivered, unacknowledged message in the
``unacked_index`` sorted set, scored by delivery time, and any worker puts a
message back on its queue once that score is older than
``visibility_timeout``. Errand keeps that timeout short, so that the jobs of a
worker killed with ``kill -9`` come back within about two minutes, and renews
the score of every message a live worker still holds (running, prefetched, or
waiting for its countdown) from a thread with its own Redis connection. A job
on a live worker is therefore never delivered twice, however long it runs or
waits.

The same thread records the worker's heartbeat, which ``/readyz`` reads.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, ClassVar

from celery import bootsteps
from celery.worker import state as worker_state

from app.clock import isotime
from app.store import connect, keys

log = logging.getLogger(__name__)


def held_tags(worker: Any) -> list[str]:
    """Delivery tags of the messages this worker's consumer holds unacknowledged."""
    consumer = getattr(worker, "consumer", None)
    task_consumer = getattr(consumer, "task_consumer", None)
    if task_consumer is None:
        return []
    delivered = task_consumer.channel.qos._delivered
    for _ in range(5):
        try:
            return list(delivered)
        except RuntimeError:  # changed size while being copied: read it again
            continue
    return []


class Lease(bootsteps.StartStopStep):
    """Worker bootstep: renews message leases and the heartbeat on a timer thread."""

    requires: ClassVar[set[str]] = {"celery.worker.components:Pool"}

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self, worker: Any) -> None:
        self.thread = threading.Thread(
            target=self.run, args=(worker,), name="errand-lease", daemon=True
        )
        self.thread.start()

    def stop(self, worker: Any) -> None:
        self.stopping.set()

    shutdown = stop

    def run(self, worker: Any) -> None:
        try:
            self.renew(worker)
        except Exception:
            log.exception("lease thread stopped")

    def renew(self, worker: Any) -> None:
        app = worker.app
        flask_app = app.flask_app
        conf = app.conf
        interval = flask_app.config["LEASE_INTERVAL"]
        timeout = flask_app.config["REDIS_TIMEOUT"]
        redis_broker = app.connection_for_read().transport.driver_type == "redis"
        options = conf.broker_transport_options or {}
        index_key = options.get("global_keyprefix", "") + options.get(
            "unacked_index_key", "unacked_index"
        )
        broker = connect(conf.broker_url, timeout) if redis_broker else None
        results = flask_app.extensions["errand.redis"]
        about = keys.worker(worker.hostname)
        started = time.time()
        while True:
            try:
                tags = held_tags(worker) if broker is not None else []
                now = time.time()
                if tags and broker is not None:
                    broker.zadd(index_key, dict.fromkeys(tags, now), xx=True)
                pipe = results.pipeline(transaction=False)
                pipe.zadd(keys.WORKERS, {worker.hostname: now})
                pipe.hset(about, mapping=describe(worker, now, started))
                pipe.expire(about, int(3 * interval) + 1)
                pipe.execute()
            except Exception as exc:  # keep renewing: a blip must not end the leases
                log.warning("lease renewal failed: %s", exc)
            if self.stopping.wait(interval):
                break
        try:
            results.pipeline().zrem(keys.WORKERS, worker.hostname).delete(about).execute()
        except Exception as exc:  # the heartbeat then ages out on its own
            log.warning("could not remove heartbeat: %s", exc)


def describe(worker: Any, now: float, started: float) -> dict[str, Any]:
    """What ``GET /api/v1/workers`` shows of this worker."""
    return {
        "name": worker.hostname,
        "pool": getattr(worker.pool_cls, "__module__", "").rsplit(".", 1)[-1],
        "concurrency": worker.concurrency,
        # The queues it consumes (-Q; all of Errand's without it), comma-separated.
        "queues": ",".join(sorted(worker.app.amqp.queues.consume_from)),
        "active": len(worker_state.active_requests),
        "reserved": len(worker_state.reserved_requests),
        "pid": os.getpid(),
        "started_at": isotime(started),
        "heartbeat_at": isotime(now),
    }
