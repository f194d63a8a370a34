"""All of Redis: key names, Lua scripts, task records and API keys.

The API, the workers and beat share one Redis client per process, made by
``connect`` and kept in ``app.extensions["errand.redis"]``. A ``sentinel://``
URL (kombu's form, ``sentinel://h1:26379;sentinel://h2:26379/0``) gives a
client that asks the sentinels for the primary of ``REDIS_SENTINEL_MASTER``
and follows it when they fail over.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from flask import current_app
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool

SCHEMES = ("redis://", "rediss://", "unix://", "sentinel://")


class Store(redis.Redis):
    """A Redis client that knows how many replicas must hold a write before it is answered.

    ``min_replicas`` (``REDIS_MIN_REPLICAS``) and ``replica_wait`` (seconds) are read
    by the scripts whose answer tells a client that something was accepted
    (``app.store.scripts``): they send ``WAIT`` in the same round trip.
    """

    min_replicas = 0
    replica_wait = 0.0


class BlockingSentinelPool(SentinelConnectionPool, redis.BlockingConnectionPool):
    """redis-py's Sentinel pool that waits for a free connection rather than failing.

    The same cap as ``BlockingConnectionPool`` (hundreds of gevent requests of one
    process share at most ``max_connections``), with Sentinel's discovery: each new
    connection goes to the primary the sentinels name now, a connection that meets
    ``READONLY`` (a demoted primary) is dropped, and idle connections to an old
    primary are closed once a new one is named.
    """


def sentinels(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """The sentinels' addresses in a ``sentinel://`` URL, and the primary's db and password."""
    addresses, params = [], {}
    for part in url.split(";"):
        found = urlsplit(part.strip())
        if found.scheme != "sentinel" or not found.hostname:
            raise ValueError(f"not a sentinel://host:port address: {part.strip()!r}")
        addresses.append((found.hostname, found.port or 26379))
        if found.password and "password" not in params:
            params["password"] = unquote(found.password)
            if found.username:
                params["username"] = unquote(found.username)
        db = found.path.strip("/")
        if db:
            params["db"] = int(db)
    return addresses, params


def connect(url: str, settings: Mapping[str, Any], max_connections: int = 100) -> Store:
    """A client that gives up within ``REDIS_TIMEOUT`` and retries a broken connection once.

    It holds at most ``max_connections`` connections; past that a request waits for
    one (under gevent, hundreds of requests of one process may want one at once),
    up to the timeout, rather than opening more.
    """
    timeout = float(settings["REDIS_TIMEOUT"])
    options: dict[str, Any] = {
        "max_connections": max_connections,
        "timeout": timeout,
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        # One quick retry mends a connection that Redis closed while it sat in
        # the pool; a stopped server still fails within about two timeouts.
        "retry": Retry(NoBackoff(), 1),
        "health_check_interval": 30,
    }
    if url.startswith("sentinel://"):
        addresses, params = sentinels(url)
        manager = Sentinel(addresses, sentinel_kwargs=sentinel_options(settings))
        pool: redis.ConnectionPool = BlockingSentinelPool(
            settings["REDIS_SENTINEL_MASTER"], manager, **options, **params
        )
    else:
        pool = redis.BlockingConnectionPool.from_url(url, **options)
    client = Store(connection_pool=pool)
    client.min_replicas = int(settings.get("REDIS_MIN_REPLICAS", 0))
    client.replica_wait = float(settings.get("REDIS_REPLICA_WAIT", 0.0))
    return client


def sentinel_options(settings: Mapping[str, Any]) -> dict[str, Any]:
    """How to talk to the sentinels themselves (their password, the same timeouts)."""
    timeout = float(settings["REDIS_TIMEOUT"])
    found: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    if settings.get("REDIS_SENTINEL_PASSWORD"):
        found["password"] = settings["REDIS_SENTINEL_PASSWORD"]
    return found


def client() -> Store:
    """The current application's Redis client."""
    found: Store = current_app.extensions["errand.redis"]
    return found
