"""Extension objects and the Redis client, created unbound and wired by ``init_app``."""

from __future__ import annotations

import redis
from flask import Flask, current_app
from flask_mail import Mail
from redis.backoff import NoBackoff
from redis.retry import Retry

mail = Mail()


def connect(url: str, timeout: float) -> redis.Redis:
    """A Redis client that gives up within ``timeout`` and retries a broken connection once."""
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        # One quick retry mends a connection that Redis closed while it sat in
        # the pool; a stopped server still fails within about two timeouts.
        retry=Retry(NoBackoff(), 1),
        health_check_interval=30,
    )


def init_app(app: Flask) -> None:
    """Bind Flask-Mail and open the Redis client for task records."""
    mail.init_app(app)
    app.extensions["errand.redis"] = connect(app.config["REDIS_URL"], app.config["REDIS_TIMEOUT"])


def store() -> redis.Redis:
    """The current application's Redis client for task records."""
    return current_app.extensions["errand.redis"]
