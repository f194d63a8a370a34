"""Per-key rate limits (Flask-Limiter, counted in Redis), with the IETF draft's headers.

Submits have their own limit (``RATE_LIMIT_SUBMIT``); every other route that
needs a key shares ``RATE_LIMIT_READ``. Counters live in Redis, so a limit
holds across gunicorn workers and machines. Answers carry ``RateLimit-Policy``
and ``RateLimit`` as in "RateLimit header fields for HTTP"; a 429 also
``Retry-After``. The cap on tasks in flight is in ``app.jobs``.
"""

from __future__ import annotations

import math
import time

from flask import Flask, Response, current_app, g, request
from flask_limiter import Limiter

from app.store import keys
from app.web.auth import PUBLIC


def limit_key() -> str:
    """Whose budget a request spends: its key's id (its address with AUTH_DISABLED)."""
    principal = g.get("principal")
    return principal.key_id if principal and principal.key_id else f"ip:{request.remote_addr}"


def _exempt() -> bool:
    if not current_app.config["RATE_LIMIT_READ"]:
        return True  # an empty setting turns the limit off
    return request.endpoint in PUBLIC or request.method == "OPTIONS" or "principal" not in g


def submit_exempt() -> bool:
    """An empty ``RATE_LIMIT_SUBMIT`` turns the submit limit off."""
    return not current_app.config["RATE_LIMIT_SUBMIT"]


limiter = Limiter(
    limit_key,
    default_limits=[lambda: current_app.config["RATE_LIMIT_READ"]],
    default_limits_exempt_when=_exempt,
)


def submit_limit() -> str:
    """The limit of ``POST /api/v1/tasks``, read from the settings per request."""
    return str(current_app.config["RATE_LIMIT_SUBMIT"])


def add_rate_limit_headers(response: Response) -> Response:
    """RateLimit-Policy on every limited answer; on a 429 also RateLimit and Retry-After.

    What is left of the window costs Redis another round trip, so only a 429,
    where the client needs it, says it.
    """
    current = limiter.current_limit
    if current is None or "RateLimit-Policy" in response.headers:
        return response  # unlimited, or another limit (the in-flight cap) answered
    name = "submit" if request.endpoint == "tasks.submit" else "read"
    window = current.limit.get_expiry()
    response.headers["RateLimit-Policy"] = f'"{name}";q={current.limit.amount};w={window}'
    if response.status_code == 429 and current.breached:
        reset = max(1, math.ceil(current.reset_at - time.time()))
        response.headers["RateLimit"] = f'"{name}";r={current.remaining};t={reset}'
        response.headers["Retry-After"] = str(reset)
    return response


def init_app(app: Flask) -> None:
    """Count requests in the task store's Redis; fail open if it does not answer."""
    timeout = app.config["REDIS_TIMEOUT"]
    app.config.setdefault("RATELIMIT_STORAGE_URI", app.config["REDIS_URL"])
    app.config.setdefault(
        "RATELIMIT_STORAGE_OPTIONS", {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    )
    app.config.setdefault("RATELIMIT_STRATEGY", "fixed-window")
    app.config.setdefault("RATELIMIT_KEY_PREFIX", keys.LIMITS_PREFIX)
    app.config.setdefault("RATELIMIT_HEADERS_ENABLED", False)
    app.config.setdefault("RATELIMIT_SWALLOW_ERRORS", True)
    # With both limits empty the limiter stays out of the request path altogether.
    app.config.setdefault(
        "RATELIMIT_ENABLED", bool(app.config["RATE_LIMIT_SUBMIT"] or app.config["RATE_LIMIT_READ"])
    )
    limiter.init_app(app)
    app.after_request(add_rate_limit_headers)
