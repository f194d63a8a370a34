"""The floor: a bare WSGI callable that makes one Redis round trip per request.

No framework and no checks, under the same gunicorn settings as Errand: what a
request costs with gunicorn's worker and one redis-py call to a Redis on
loopback. Errand's submit and status reads each make one round trip too (one
script), so their distance to this is Errand's own work (the key, the limits,
the record, the body and headers), and ``bench/speed.py`` reports it beside the
ratio to a bare Flask route (which makes no round trip at all).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

import redis

client = redis.Redis(
    connection_pool=redis.BlockingConnectionPool.from_url(
        os.environ["REDIS_URL"], max_connections=100, timeout=2, socket_timeout=2
    )
)
BODY = b'{"ok":true}'
HEADERS = [("Content-Type", "application/json"), ("Content-Length", str(len(BODY)))]


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    client.get("errand-bench-floor")  # one round trip, as Errand's one script
    start_response("200 OK", list(HEADERS))
    return [BODY]
