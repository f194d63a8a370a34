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


def restore_abandoned(worker: Any) -> None:
    """Put back on their queues the messages whose lease ran out (kombu's own sweep)."""
    consumer = getattr(worker, "consumer", None)
    channel = getattr(getattr(consumer, "task_consumer", None), "channel", None)
    if channel is not None:
        channel.qos.restore_visible(num=channel.unacked_restore_limit, interval=1)


# Set once the worker gave its leases up (``release``): renewing them stops for good.
released = threading.Event()


def unacked_index(conf: Any) -> str:
    """kombu's sorted set of delivered messages, scored by when their lease began."""
    options = conf.broker_transport_options or {}
    return options.get("global_keyprefix", "") + options.get("unacked_index_key", "unacked_index")


def release(worker: Any) -> int:
    """Give up the lease of every message the worker holds, so they come back soon; how many.

    Each lease is dated 0, as if it had run out long ago: the next sweep of any live
    worker (every ``VISIBILITY_TIMEOUT / 6`` seconds) puts the messages back on their
    queues, or a worker's first sweep when it starts. Pushing them back from here
    instead could hand them to this process's own pending BRPOP just as it exits, and
    lose them. On RabbitMQ nothing is needed: the broker returns unacknowledged
    messages when the connection drops.
    """
    released.set()
    app = worker.app
    if app.connection_for_read().transport.driver_type != "redis":
        return 0
    tags = held_tags(worker)
    if tags:
        broker = connect(app.conf.broker_url, app.flask_app.config)
        broker.zadd(unacked_index(app.conf), dict.fromkeys(tags, 0), xx=True)
    return len(tags)


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
        redis_broker = app.connection_for_read().transport.driver_type == "redis"
        index_key = unacked_index(conf)
        broker = connect(conf.broker_url, flask_app.config) if redis_broker else None
        results = flask_app.extensions["errand.redis"]
        about = keys.worker(worker.hostname)
        # kombu sweeps for abandoned messages from the event loop's timer; a gevent
        # worker has no such loop (Celery's synloop), and its sweep waits for a BRPOP
        # that ends with nothing, which never comes while other replies arrive: a
        # gevent-only fleet would never bring back a dead worker's jobs. Sweep here.
        sweep = redis_broker and getattr(worker.pool, "is_green", False)
        started = time.time()
        while True:
            try:
                tags = held_tags(worker) if broker is not None else []
                now = time.time()
                if tags and broker is not None and not released.is_set():
                    broker.zadd(index_key, dict.fromkeys(tags, now), xx=True)
                if sweep:
                    restore_abandoned(worker)
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
