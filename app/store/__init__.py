"""All of Redis: key names, Lua scripts, task records and API keys.

The API, the workers and beat share one Redis client per process, made by
``connect`` and kept in ``app.extensions["errand.redis"]``.
"""

from __future__ import annotations

import redis
from flask import current_app
from redis.backoff import NoBackoff
from redis.retry import Retry


def connect(url: str, timeout: float, max_connections: int = 100) -> redis.Redis:
    """A Redis client that gives up within ``timeout`` and retries a broken connection once.

    It holds at most ``max_connections`` connections; past that a request waits for
    one (under gevent, hundreds of requests of one process may want one at once),
    up to ``timeout``, rather than opening more.
    """
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        # One quick retry mends a connection that Redis closed while it sat in
        # the pool; a stopped server still fails within about two timeouts.
        retry=Retry(NoBackoff(), 1),
        health_check_interval=30,
    )
    return redis.Redis(connection_pool=pool)


def client() -> redis.Redis:
    """The current application's Redis client."""
    found: redis.Redis = current_app.extensions["errand.redis"]
    return found
