"""A plain Celery application with none of Errand's code, for wire-format tests.

``celery -A tests.plain_celery worker`` consumes what Errand's submit script pushes;
its ``test.echo`` writes what it received to Redis, in the order it ran.
"""

from __future__ import annotations

import os

import redis
from celery import Celery

app = Celery("plain", broker=os.environ["REDIS_URL"], backend=os.environ["REDIS_URL"])
app.conf.task_default_queue = os.environ.get("TASK_QUEUE", "celery")


@app.task(name="test.echo", bind=True)
def echo(self: object, params: dict[str, object]) -> object:
    request = self.request  # type: ignore[attr-defined]
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    client.rpush("plain:ran", f"{request.id}|{params['value']}|{request.eta or ''}")
    return params["value"]
