"""The scripts' floor: a bare WSGI callable that runs Errand's own submit and status scripts.

``POST /`` runs ``submit.lua`` for a new no-op task (as Errand's submit does, with
a rate window, the in-flight cap and the indexes) and ``GET /`` runs
``status.lua`` for one task, each through Errand's store (``app.store.connect``,
``app.store.records``), and answers a fixed body. No framework, no key check, no
validation, no resource, headers or metrics: what the one script each costs, in
Redis and in the client, under the same gunicorn settings. ``bench/speed.py``
puts it beside the floor (``bench/floor.py``, one GET): Errand's distance to this
is its own Python, the floor's distance to it is the scripts'.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from app.store import connect, records
from app.store.quotas import Quota
from app.worker import messages

client = connect(os.environ["REDIS_URL"], {"REDIS_TIMEOUT": "2"})
HIGH = 1_000_000_000  # counted, never reached
OWNER = "benchfloor"
BODY = b'{"ok":true}'
HEADERS = [("Content-Type", "application/json"), ("Content-Length", str(len(BODY)))]


def submit() -> str:
    task_id = str(uuid.uuid4())
    created = time.time()
    message = messages.encode(task_id, "bench.noop", b"{}", "celery")
    done = records.submit(
        client,
        task_id=task_id,
        task_name="bench.noop",
        shown={"task": "bench.noop", "created_at": "2026-12-01T00:00:00.000Z", "retries": "0"},
        created=created,
        deadline_us=int((created + 10) * 1_000_000),
        params_json="{}",
        owner=OWNER,
        queue="celery",
        queue_list="celery",
        message=message,
        quota=Quota("submit", f"errand:limits:submit:{OWNER}", HIGH, 1),
        in_flight_cap=HIGH,
    )
    assert done.verdict == "ok", done
    return task_id


READ = submit()  # the task every status read reads


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    if environ["REQUEST_METHOD"] == "POST":
        submit()
    else:
        quota = Quota("read", f"errand:limits:read:{OWNER}", HIGH, 1)
        found, _ = records.status(client, READ, OWNER, quota)
        assert found is not None
    start_response("200 OK", list(HEADERS))
    return [BODY]
