"""Celery task messages in kombu's Redis wire format, built without a network call.

What ``apply_async`` would push onto a Redis queue (Celery's message protocol 2,
in kombu's JSON envelope with a base64 body), so that the API can push it in
the same script that writes the task's record (``submit.lua``). A stock Celery
worker consumes it as any other message (the tests check that).

Priority: kombu's Redis transport keeps one list per priority step (0, 3, 6, 9)
and pops the lower number first. Errand's priority means what it means on
RabbitMQ and in Celery's docs, higher runs first, so priority ``p`` goes to the
list of ``9 - p``.
"""

from __future__ import annotations

import base64
import secrets
import socket
from bisect import bisect
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

PRIORITY_STEPS = (0, 3, 6, 9)  # kombu.transport.redis.PRIORITY_STEPS
SEPARATOR = "\x06\x16"  # kombu's Redis Channel.sep
ORIGIN = f"errand-api@{socket.gethostname()}"
_EMBED = orjson.dumps({"callbacks": None, "errbacks": None, "chain": None, "chord": None})


def redis_priority(priority: int | None) -> int:
    """Kombu's Redis priority (0 first) for Errand's (higher first; none is 0, the lowest)."""
    return 9 - max(0, min(9, priority or 0))


def queue_list(queue: str, priority: int | None) -> str:
    """The Redis list a message of this priority waits in (kombu's ``_q_for_pri``)."""
    kombu_priority = redis_priority(priority)
    step = PRIORITY_STEPS[bisect(PRIORITY_STEPS, kombu_priority) - 1]
    return f"{queue}{SEPARATOR}{step}" if step else queue


def encode(
    task_id: str,
    task_name: str,
    params_json: bytes,
    queue: str,
    countdown: int = 0,
    priority: int | None = None,
    headers: dict[str, Any] | None = None,
) -> bytes:
    """The message for one task that takes ``params`` (already JSON) as its one argument."""
    eta = None
    if countdown:
        eta = (datetime.now(UTC) + timedelta(seconds=countdown)).isoformat()
    body = b"[[" + params_json + b"],{}," + _EMBED + b"]"
    message = {
        "body": base64.b64encode(body).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py",
            "task": task_name,
            "id": task_id,
            "shadow": None,
            "eta": eta,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": [None, None],
            "root_id": task_id,
            "parent_id": None,
            # Flower shows these; params may hold addresses or secrets, so only the size.
            "argsrepr": f"[<params, {len(params_json)} bytes>]",
            "kwargsrepr": "{}",
            "origin": ORIGIN,
            "ignore_result": False,
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": {},
            **(headers or {}),
        },
        "properties": {
            "correlation_id": task_id,
            "reply_to": "",
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": redis_priority(priority),
            "body_encoding": "base64",
            "delivery_tag": secrets.token_hex(16),  # unique, as kombu's uuid4 is
        },
    }
    return orjson.dumps(message)
