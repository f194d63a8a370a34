"""Errand's own periodic jobs, run by celery beat (``beat_schedule`` in ``config.py``)."""

from __future__ import annotations

import logging
import time

from celery import shared_task
from flask import current_app

from app import store
from app.store import records

log = logging.getLogger(__name__)


@shared_task(name="errand.prune_index", ignore_result=True)
def prune_index() -> int:
    """Drop index entries whose task records have expired."""
    client = store.client()
    cutoff = time.time() - current_app.config["TASK_RETENTION"]
    removed = records.prune(client, cutoff, records.indexes(client))
    log.info("pruned %d expired entries from the task index", removed)
    return removed
