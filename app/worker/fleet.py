"""What operators watch of the workers: who is alive, and how deep each queue is."""

from __future__ import annotations

import time
from typing import Any

import redis
from amqp.exceptions import ChannelError
from celery import Celery

from app.store import keys
from app.tasks.registry import Registry

_NUMBERS = ("concurrency", "active", "reserved", "pid")


def live_workers(client: redis.Redis, lease_interval: float) -> list[dict[str, Any]]:
    """Workers whose heartbeat is fresh, as their lease threads describe them."""
    horizon = time.time() - 3 * lease_interval
    names = [n.decode() for n in client.zrangebyscore(keys.WORKERS, horizon, "+inf")]
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.hgetall(keys.worker(name))
    workers = []
    for raw in pipe.execute():
        if raw:
            about: dict[str, Any] = {k.decode(): v.decode() for k, v in raw.items()}
            for field in _NUMBERS:
                about[field] = int(about.get(field, 0))
            about["queues"] = [q for q in about.get("queues", "").split(",") if q]
            workers.append(about)
    return sorted(workers, key=lambda w: w["name"])


def count_live_workers(client: redis.Redis, lease_interval: float) -> int:
    """How many workers sent a heartbeat recently (each lease thread does every interval)."""
    return int(client.zcount(keys.WORKERS, time.time() - 3 * lease_interval, "+inf"))


def queue_depths(celery_app: Celery) -> dict[str, int]:
    """Messages waiting in each queue Errand uses (``app.worker``'s ``task_queues``)."""
    names = sorted(celery_app.amqp.queues.keys()) or [celery_app.conf.task_default_queue]
    depths = {}
    with celery_app.connection_for_read() as connection:
        for name in names:
            # A passive declare counts messages without creating the queue; the
            # broker answers 404 for a queue that does not exist (on Redis: is empty).
            with connection.channel() as channel:
                try:
                    depths[name] = int(channel.queue_declare(queue=name, passive=True)[1])
                except ChannelError as exc:
                    if "404" not in {str(exc.code), str(getattr(exc, "reply_code", ""))}:
                        raise
                    depths[name] = 0
    return depths


def queue_listing(
    depths: dict[str, int], task_types: Registry, workers: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Each queue: its depth, the task types routed to it, how many live workers consume it.

    A queue with jobs and no worker is a deploy that forgot a ``-Q``: its jobs wait.
    """
    return [
        {
            "name": name,
            "depth": depth,
            "task_types": sorted(n for n, t in task_types.items() if t.queue == name),
            "workers": sum(name in w["queues"] for w in workers),
        }
        for name, depth in depths.items()
    ]
