"""Errand's settings, read from environment variables once, at start-up.

Every setting is listed in the README with its default. ``load()`` is the only
place that reads the environment; the application factory calls it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import unicodedata
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote, urlsplit


class ConfigError(RuntimeError):
    """A setting is missing or has a value Errand cannot use."""


def _int(env: Mapping[str, str], name: str, default: int, low: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, not {raw!r}") from None
    if value < low:
        raise ConfigError(f"{name} must be at least {low}, not {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, zero_ok: bool = False) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, not {raw!r}") from None
    if value < 0 or (value == 0 and not zero_ok):
        raise ConfigError(f"{name} must be above 0, not {value}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw == "":
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name} must be true or false, not {raw!r}")


_UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
_RATE = re.compile(r"^\s*(\d+)\s*(?:/|per)\s*(\d+)?\s*(second|minute|hour|day)s?\s*$")


def _rate(env: Mapping[str, str], name: str, default: str) -> tuple[int, int] | None:
    """A rate limit such as ``50 per second`` or ``10/5 minutes`` as (requests, seconds)."""
    raw = env.get(name, default).strip().lower()
    if raw == "":
        return None  # an empty setting turns the limit off
    match = _RATE.match(raw)
    if match is None or int(match[1]) < 1:
        raise ConfigError(
            f"{name} must look like '50 per second' or '10 per 5 minutes', not {raw!r}"
        )
    return int(match[1]), int(match[2] or 1) * _UNITS[match[3]]


def _choice(env: Mapping[str, str], name: str, default: str, allowed: set[str]) -> str:
    value = env.get(name, "") or default
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(sorted(allowed))}, not {value!r}")
    return value


# A queue is a plain name: it becomes a Redis list (and RabbitMQ queue) of that name, so
# kombu's own keys on a Redis broker are refused (``unacked``, ``_kombu.binding.*``).
_QUEUE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_KOMBU_KEYS = {"unacked", "unacked_index", "unacked_mutex"}
# A route's pattern is a task type's name, or a prefix of names ending in ``*``.
_PATTERN = re.compile(r"^(?:[A-Za-z0-9_.-]{1,100}|[A-Za-z0-9_.-]{0,99}\*)$")


def queue_name(name: str, value: str) -> str:
    """``value`` if it can name a queue, else a ConfigError that says which setting is wrong."""
    if not _QUEUE.match(value) or value in _KOMBU_KEYS or value.startswith("_kombu"):
        raise ConfigError(
            f"{name} must name queues with letters, digits, '_', '.' and '-' "
            f"(at most 64, not kombu's own keys), not {value!r}"
        )
    return value


def _routes(env: Mapping[str, str], name: str) -> list[tuple[str, str]]:
    """``demo.progress=io,email.*=mail`` as [(pattern, queue)], in the order given."""
    routes = []
    for part in env.get(name, "").split(","):
        if not part.strip():
            continue
        pattern, equals, queue = (s.strip() for s in part.partition("="))
        if not equals or not _PATTERN.match(pattern):
            raise ConfigError(
                f"{name} must look like 'demo.progress=io,email.*=mail' (a task type's name "
                f"or a prefix ending in *, '=', a queue), not {part.strip()!r}"
            )
        routes.append((pattern, queue_name(name, queue)))
    return routes


REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "sentinel://")


def sentinels(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """The sentinels' addresses in a ``sentinel://h1:26379;sentinel://h2/0`` URL, and the
    primary's db, username and password; ValueError (naming no password) if it is not one."""
    addresses, params = [], {}
    for part in url.split(";"):
        found = urlsplit(part.strip())
        try:
            port = found.port or 26379
        except ValueError:
            port = 0
        if found.scheme != "sentinel" or not found.hostname or not port:
            raise ValueError("not a sentinel://host:port address")
        addresses.append((found.hostname, port))
        if found.password and "password" not in params:
            params["password"] = unquote(found.password)
            if found.username:
                params["username"] = unquote(found.username)
        db = found.path.strip("/")
        if db:
            if not db.isdigit():
                raise ValueError("a sentinel:// URL's database is a number")
            params["db"] = int(db)
    return addresses, params


def load(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Return the Flask configuration (with a ``CELERY`` section) for this environment."""
    env = os.environ if environ is None else environ
    errand_env = env.get("ERRAND_ENV", "development")
    if errand_env not in {"development", "production"}:
        raise ConfigError(f"ERRAND_ENV must be development or production, not {errand_env!r}")
    production = errand_env == "production"

    secret_key = env.get("SECRET_KEY", "")
    auth_disabled = _bool(env, "AUTH_DISABLED", False)
    if production and not secret_key:
        raise ConfigError("SECRET_KEY must be set when ERRAND_ENV=production")
    if production and len(secret_key) < 32:
        raise ConfigError("SECRET_KEY must be at least 32 characters when ERRAND_ENV=production")
    if production and auth_disabled:
        raise ConfigError("AUTH_DISABLED must not be set when ERRAND_ENV=production")
    if production and _bool(env, "FLASK_DEBUG", False):
        raise ConfigError("FLASK_DEBUG must be off when ERRAND_ENV=production")

    origins = [o.strip() for o in env.get("CORS_ORIGINS", "").split(",") if o.strip()]
    if production and "*" in origins:
        raise ConfigError("CORS_ORIGINS must name origins, not *, when ERRAND_ENV=production")

    webhook_secret = env.get("WEBHOOK_SECRET", "")
    if production and len(webhook_secret) < 32:
        raise ConfigError(
            "WEBHOOK_SECRET must be set, at least 32 characters, when ERRAND_ENV=production"
        )
    if not webhook_secret:  # development: one of its own, made from SECRET_KEY
        key = (secret_key or "dev-only-not-secret").encode()
        webhook_secret = hmac.new(key, b"errand-webhooks", hashlib.sha256).hexdigest()

    redis_url = env.get("REDIS_URL", "redis://localhost:6379/0")
    broker_url = env.get("CELERY_BROKER_URL") or redis_url
    result_url = env.get("CELERY_RESULT_BACKEND") or redis_url
    if not result_url.startswith(REDIS_SCHEMES):
        raise ConfigError(
            "CELERY_RESULT_BACKEND must be a redis://, rediss:// or sentinel:// URL: "
            "Errand keeps its task records beside the results"
        )
    sentinel_master = env.get("REDIS_SENTINEL_MASTER", "")
    sentinel_password = env.get("REDIS_SENTINEL_PASSWORD", "")
    sentinel_options: dict[str, Any] = {}
    for name, url in (("REDIS_URL", redis_url), ("CELERY_BROKER_URL", broker_url),
                      ("CELERY_RESULT_BACKEND", result_url)):  # fmt: skip
        if url.startswith("sentinel://"):
            try:
                sentinels(url)
            except ValueError as exc:
                raise ConfigError(
                    f"{name} must list sentinels as sentinel://host:port;sentinel://host:port/0"
                    f" ({exc})"
                ) from None
            if not sentinel_master:
                raise ConfigError(f"REDIS_SENTINEL_MASTER must name the primary {name} asks for")
    min_replicas = _int(env, "REDIS_MIN_REPLICAS", 0)

    sender = env.get("MAIL_DEFAULT_SENDER", "errand@localhost")
    if any(unicodedata.category(c) == "Cc" or c in "\u2028\u2029" for c in sender):
        raise ConfigError("MAIL_DEFAULT_SENDER must not hold control characters or line breaks")

    retention = _int(env, "TASK_RETENTION", 7 * 24 * 3600, low=60)
    visibility = _int(env, "VISIBILITY_TIMEOUT", 60, low=4)
    timeout = _float(env, "REDIS_TIMEOUT", 1.0)
    restore_interval = max(1, visibility // 6)
    # WAIT holds the connection: it must end well inside the socket's timeout.
    replica_wait = _float(env, "REDIS_REPLICA_WAIT", min(0.5, timeout / 2))
    if replica_wait >= timeout:
        raise ConfigError(
            f"REDIS_REPLICA_WAIT ({replica_wait}) must be shorter than REDIS_TIMEOUT ({timeout})"
        )
    # How every client talks to the sentinels themselves: their password, the same timeouts.
    sentinel_kwargs: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    if sentinel_password:
        sentinel_kwargs["password"] = sentinel_password
    if sentinel_master:  # how kombu and Celery's result backend find the primary
        sentinel_options = {"master_name": sentinel_master, "sentinel_kwargs": sentinel_kwargs}

    queue = queue_name("TASK_QUEUE", env.get("TASK_QUEUE") or "celery")
    transport = {
        "visibility_timeout": visibility,
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "unacked_restore_interval": restore_interval,
        "unacked_restore_throttle": 1,
        **(sentinel_options if broker_url.startswith("sentinel://") else {}),
    }
    backend = "SentinelResultStore" if result_url.startswith("sentinel://") else "ResultStore"
    result_options: dict[str, Any] = {"visibility_timeout": visibility}
    if result_url.startswith("sentinel://"):
        result_options.update(sentinel_options)
    celery = {
        "broker_url": broker_url,
        # Our subclass of Celery's Redis backend also closes task records.
        "result_backend": f"app.worker.results:{backend}+{result_url}",
        "result_expires": retention,
        # A finished task whose result cannot be stored waits and retries (its
        # message stays unacknowledged and leased) rather than being lost.
        "result_backend_always_retry": True,
        "result_backend_max_sleep_between_retries_ms": 2000,
        "result_backend_transport_options": result_options,
        "redis_socket_timeout": timeout,
        "redis_socket_connect_timeout": timeout,
        "redis_retry_on_timeout": True,
        "broker_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": timeout,
        "visibility_timeout": visibility,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # STARTED is stored by Errand's start-of-task check, in the same round trip.
        "task_track_started": False,
        "task_default_queue": queue,
        # Task events, so that Flower pointed at the same broker sees Errand's tasks.
        "worker_send_task_events": True,
        "worker_prefetch_multiplier": _int(env, "WORKER_PREFETCH_MULTIPLIER", 1, low=1),
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "task_publish_retry_policy": {
            "max_retries": 1,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.2,
        },
        "timezone": "UTC",
    }
    return {
        "ERRAND_ENV": errand_env,
        "SECRET_KEY": secret_key or "dev-only-not-secret",
        "MAX_CONTENT_LENGTH": _int(env, "MAX_CONTENT_LENGTH", 1024 * 1024, low=1024),
        "REDIS_URL": result_url,
        "REDIS_TIMEOUT": timeout,
        "REDIS_SENTINEL_MASTER": sentinel_master,
        "REDIS_SENTINEL_PASSWORD": sentinel_password,
        "REDIS_SENTINEL_KWARGS": sentinel_kwargs,
        "REDIS_MIN_REPLICAS": min_replicas,
        "REDIS_REPLICA_WAIT": replica_wait,
        "REDIS_MAX_CONNECTIONS": _int(env, "REDIS_MAX_CONNECTIONS", 100, low=2),
        "TASK_RETENTION": retention,
        "VISIBILITY_TIMEOUT": visibility,
        "LEASE_INTERVAL": max(1.0, visibility / 4),
        "SUBMIT_DEADLINE": 4.0,
        "AUTH_DISABLED": auth_disabled,
        "KEY_CACHE_SECONDS": _float(env, "KEY_CACHE_SECONDS", 5.0, zero_ok=True),
        "METRICS_PUBLIC": _bool(env, "METRICS_PUBLIC", False),
        "FAST_PATH": _bool(env, "FAST_PATH", True),
        "RATE_LIMIT_SUBMIT": _rate(env, "RATE_LIMIT_SUBMIT", "50 per second"),
        "RATE_LIMIT_READ": _rate(env, "RATE_LIMIT_READ", "200 per second"),
        "AUTH_FAILURE_LIMIT": _rate(env, "AUTH_FAILURE_LIMIT", "30 per minute"),
        "IN_FLIGHT_LIMIT": _int(env, "IN_FLIGHT_LIMIT", 1000, low=1),
        "IN_FLIGHT_RETRY_AFTER": _int(env, "IN_FLIGHT_RETRY_AFTER", 5, low=1),
        "WORKFLOW_MAX_STEPS": _int(env, "WORKFLOW_MAX_STEPS", 100, low=1),
        "CORS_ORIGINS": origins,
        "WORKER_SHUTDOWN_GRACE": _float(env, "WORKER_SHUTDOWN_GRACE", 25.0),
        "PRUNE_INTERVAL": _int(env, "PRUNE_INTERVAL", 3600, low=1),
        "SCHEDULE_LIMIT": _int(env, "SCHEDULE_LIMIT", 100, low=1),
        "SCHEDULE_MIN_INTERVAL": _int(env, "SCHEDULE_MIN_INTERVAL", 60, low=1),
        "SCHEDULES_FILE": env.get("SCHEDULES_FILE", ""),
        "BEAT_LOCK_TIMEOUT": _int(env, "BEAT_LOCK_TIMEOUT", 30, low=2),
        "WAIT_LIMIT": _int(env, "WAIT_LIMIT", 100, low=1),
        "STREAM_TOKEN_TTL": _int(env, "STREAM_TOKEN_TTL", 60, low=5),
        "SSE_HEARTBEAT": _float(env, "SSE_HEARTBEAT", 15.0),
        "SSE_MAX_SECONDS": _float(env, "SSE_MAX_SECONDS", 300.0),
        "IDEMPOTENCY_TTL": _int(env, "IDEMPOTENCY_TTL", 24 * 3600, low=60),
        "LOG_LEVEL": env.get("LOG_LEVEL", "INFO").upper(),
        # gunicorn.conf.py sets this so that every gunicorn worker's metrics add up.
        "METRICS_MULTIPROCESS": bool(env.get("PROMETHEUS_MULTIPROC_DIR")),
        "LOG_FORMAT": _choice(env, "LOG_FORMAT", "text", {"text", "json"}),
        "TASK_ROUTES": _routes(env, "TASK_ROUTES"),
        "TASK_MODULES": [m.strip() for m in env.get("TASK_MODULES", "").split(",") if m.strip()],
        "MAIL_SERVER": env.get("MAIL_SERVER", "localhost"),
        "MAIL_PORT": _int(env, "MAIL_PORT", 1025, low=1),
        "MAIL_USERNAME": env.get("MAIL_USERNAME") or None,
        "MAIL_PASSWORD": env.get("MAIL_PASSWORD") or None,
        "MAIL_USE_TLS": _bool(env, "MAIL_USE_TLS", False),
        "MAIL_USE_SSL": _bool(env, "MAIL_USE_SSL", False),
        "MAIL_DEFAULT_SENDER": sender,
        "MAIL_MAX_RETRIES": _int(env, "MAIL_MAX_RETRIES", 5),
        "MAIL_RETRY_BACKOFF": _float(env, "MAIL_RETRY_BACKOFF", 2.0),
        "MAIL_BATCH_SIZE": _int(env, "MAIL_BATCH_SIZE", 100, low=1),
        "MAIL_TEMPLATE_LIMIT": _int(env, "MAIL_TEMPLATE_LIMIT", 100_000, low=1),
        "MAIL_CHECK_RECIPIENTS": _int(env, "MAIL_CHECK_RECIPIENTS", 100, low=1),
        "MAIL_RENDER_BUDGET": _int(env, "MAIL_RENDER_BUDGET", 20_000_000, low=1),
        "MAIL_TIMEOUT": _float(env, "MAIL_TIMEOUT", 30.0),
        "WEBHOOK_SECRET": webhook_secret,
        "WEBHOOK_ALLOW_PRIVATE": _bool(env, "WEBHOOK_ALLOW_PRIVATE", False),
        "WEBHOOK_ALLOWED_HOSTS": frozenset(
            h.strip().lower() for h in env.get("WEBHOOK_ALLOWED_HOSTS", "").split(",") if h.strip()
        ),
        "WEBHOOK_TIMEOUT": _float(env, "WEBHOOK_TIMEOUT", 5.0),
        "WEBHOOK_MAX_ATTEMPTS": _int(env, "WEBHOOK_MAX_ATTEMPTS", 8, low=1),
        "WEBHOOK_BACKOFF": _float(env, "WEBHOOK_BACKOFF", 1.0),
        "WEBHOOK_BACKOFF_MAX": _float(env, "WEBHOOK_BACKOFF_MAX", 300.0),
        "CELERY": celery,
    }
