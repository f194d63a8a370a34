"""All of Redis: key names, Lua scripts, task records and API keys.

The API, the workers and beat share one Redis client per process, made by
``connect`` and kept in ``app.extensions["errand.redis"]``. A ``sentinel://``
URL (kombu's form, ``sentinel://h1:26379;sentinel://h2:26379/0``) gives a
client that asks the sentinels for the primary of ``REDIS_SENTINEL_MASTER``
and follows it when they fail over.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from queue import Empty, Full
from typing import Any

import redis
from flask import current_app
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool

import config

SCHEMES = config.REDIS_SCHEMES
sentinels = config.sentinels

# A connection's attribute, set by a caller that read every answer it asked for.
READ_ALL = "errand_read_all"


class Store(redis.Redis):
    """A Redis client that knows how many replicas must hold a write before it is answered.

    ``min_replicas`` (``REDIS_MIN_REPLICAS``) and ``replica_wait`` (seconds) are read
    by the scripts whose answer tells a client that something was accepted
    (``app.store.scripts``): they send ``WAIT`` in the same round trip.
    """

    min_replicas = 0
    replica_wait = 0.0


class Checkout:
    """``BlockingConnectionPool``'s checkout and return, lean: a fifth of a status read's CPU.

    redis-py 8 records every checkout and return for its OpenTelemetry metrics
    (looking up, and finding off, its collector six times a round trip), and goes
    through ``Queue.get``/``put``, a retry object and a readiness poll each time.
    Here a free connection is taken off the pool's queue at once, and only when none
    is free does a request wait on it, up to the pool's timeout.
    What is kept is what makes a pooled connection safe to use: a process that
    forked gets new connections, a connection is connected, and one with unread
    data (an answer nobody read) is replaced, never handed out. The readiness poll
    is skipped only for a connection whose last user read every answer it asked for
    and said so (``app.store.scripts.call`` sets ``READ_ALL``); redis-py's own
    commands do not, so a connection they gave back is polled as before.
    Errand turns on neither redis-py's client-side cache nor its maintenance
    notifications, the two cases in which redis-py lets unread data pass.
    """

    def get_connection(self, command_name: object = None, *keys: object, **options: object) -> Any:
        if self.pid != os.getpid():
            self._checkpid()
        try:
            connection = self.pool.get_nowait()
        except Empty:  # every place is taken: wait for one
            try:
                connection = self.pool.get(block=True, timeout=self.timeout)
            except Empty:
                raise redis.ConnectionError("No connection available.") from None
        if connection is None:  # a free place: a new connection
            connection = self.make_connection()
        read_all = connection.__dict__.pop(READ_ALL, False)  # said of this use only
        try:
            if connection._sock is None:  # redis-py's connect() asks the same first
                connection.connect()
            elif not read_all:  # else its last user read every answer: nothing is unread
                self._ensure_nothing_unread(connection)
        except BaseException:
            self.release(connection)
            raise
        return connection

    @staticmethod
    def _ensure_nothing_unread(connection: Any) -> None:
        try:
            if connection.can_read():
                raise redis.ConnectionError("Connection has data")
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            connection.disconnect()
            connection.connect()
            if connection.can_read():
                raise redis.ConnectionError("Connection not ready") from None

    def release(self, connection: Any) -> None:
        if self.pid != os.getpid():
            self._checkpid()
        if not self.owns_connection(connection):
            connection.disconnect()  # made before a fork, or for an old primary
            connection = None  # its place is free again
        elif connection.should_reconnect():
            connection.disconnect()
        with contextlib.suppress(Full):  # the pool was reset meanwhile: not its own now
            self.pool.put_nowait(connection)


class BlockingPool(Checkout, redis.BlockingConnectionPool):
    """redis-py's BlockingConnectionPool, with ``Checkout``'s leaner checkout and return."""


class BlockingSentinelPool(Checkout, SentinelConnectionPool, redis.BlockingConnectionPool):
    """redis-py's Sentinel pool that waits for a free connection rather than failing.

    The same cap as ``BlockingConnectionPool`` (hundreds of gevent requests of one
    process share at most ``max_connections``), with Sentinel's discovery: each new
    connection goes to the primary the sentinels name now, a connection that meets
    ``READONLY`` (a demoted primary) is dropped, and idle connections to an old
    primary are closed once a new one is named.
    """


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
        manager = Sentinel(addresses, sentinel_kwargs=settings["REDIS_SENTINEL_KWARGS"])
        pool: redis.ConnectionPool = BlockingSentinelPool(
            settings["REDIS_SENTINEL_MASTER"], manager, **options, **params
        )
    else:
        pool = BlockingPool.from_url(url, **options)
    client = Store(connection_pool=pool)
    client.min_replicas = int(settings.get("REDIS_MIN_REPLICAS", 0))
    client.replica_wait = float(settings.get("REDIS_REPLICA_WAIT", 0.0))
    return client


def client() -> Store:
    """The current application's Redis client."""
    found: Store = current_app.extensions["errand.redis"]
    return found
