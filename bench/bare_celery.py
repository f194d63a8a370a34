"""Bare Celery with Errand's delivery settings and none of its code, for the drain bench.

``celery -A bench.bare_celery worker`` drains what ``noop.apply_async`` queued.
"""

from __future__ import annotations

import os

from celery import Celery

import config

settings = config.load()["CELERY"]
app = Celery("bare", broker=os.environ["REDIS_URL"], backend=os.environ["REDIS_URL"])
for name in ("result_backend", "broker_transport"):  # Errand's own classes: not here
    settings.pop(name, None)
app.conf.update(settings, broker_url=os.environ["REDIS_URL"])


@app.task(name="bench.noop")
def noop() -> None:
    """Do nothing."""
