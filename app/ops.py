"""What operators watch: the live workers and the depth of each queue."""

from __future__ import annotations

import time
from typing import Any

from amqp.exceptions import ChannelError
from flask import Blueprint, Response, current_app, jsonify

from app.celery_app import celery_of
from app.errors import BrokerUnavailable
from app.extensions import store
from app.jobs import UNREACHABLE
from app.lease import worker_key
from app.records import WORKERS

bp = Blueprint("ops", __name__, url_prefix="/api/v1")

_NUMBERS = ("concurrency", "active", "reserved", "pid")


def live_workers() -> list[dict[str, Any]]:
    """Workers whose heartbeat is fresh, as their lease threads describe them."""
    horizon = time.time() - 3 * current_app.config["LEASE_INTERVAL"]
    client = store()
    names = [n.decode() for n in client.zrangebyscore(WORKERS, horizon, "+inf")]
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.hgetall(worker_key(name))
    workers = []
    for raw in pipe.execute():
        if raw:
            about: dict[str, Any] = {k.decode(): v.decode() for k, v in raw.items()}
            for field in _NUMBERS:
                about[field] = int(about.get(field, 0))
            workers.append(about)
    return sorted(workers, key=lambda w: w["name"])


def queue_depths() -> dict[str, int]:
    """Messages waiting in each queue the workers consume, asked of the broker."""
    celery_app = celery_of(current_app)
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


@bp.get("/workers")
def workers() -> Response:
    try:
        return jsonify({"items": live_workers()})
    except UNREACHABLE as exc:
        raise BrokerUnavailable(f"the task store did not answer: {exc}") from exc


@bp.get("/queues")
def queues() -> Response:
    try:
        depths = queue_depths()
    except UNREACHABLE as exc:
        raise BrokerUnavailable(f"the broker did not answer: {exc}") from exc
    return jsonify({"items": [{"name": n, "depth": d} for n, d in depths.items()]})
