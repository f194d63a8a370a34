"""Errand's errors, each with the HTTP status it is answered with (``app.web.problems``).

ErrandError
├── InvalidBody          400  the body is not a JSON object
├── Unauthenticated      401  no API key, or a wrong or revoked one
├── Forbidden            403  the key may not call this route
├── TaskNotFound         404  unknown, expired, or not yours
├── ScheduleNotFound     404  unknown, or not yours
├── StateConflict        409  the task's state does not allow it
├── Unprocessable        422  unknown task type, bad params, options or filters
├── TooManyRequests      429  a limit of the key's was reached
│   └── TooManyInFlight  429  the key has as many unfinished tasks as it may
└── Unavailable          503  a dependency did not answer in time
    ├── BrokerUnavailable     the broker
    ├── StoreUnavailable      the Redis that keeps records and results
    └── MailUnavailable       the SMTP server (in a worker: the job retries)
"""

from __future__ import annotations

from typing import Any


class ErrandError(Exception):
    """An error with an HTTP status, answered as problem+json."""

    status = 500

    def __init__(self, detail: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        self.headers: dict[str, str] = {}


class InvalidBody(ErrandError):
    """The body is not a JSON object."""

    status = 400


class Unauthenticated(ErrandError):
    """No API key, or a wrong or revoked one."""

    status = 401

    def __init__(self, detail: str, error: str | None = None) -> None:
        super().__init__(detail)
        challenge = 'Bearer realm="errand"' + (f', error="{error}"' if error else "")
        self.headers["WWW-Authenticate"] = challenge


class Forbidden(ErrandError):
    """The key is valid but may not call this route."""

    status = 403


class TaskNotFound(ErrandError):
    """No task with that id is known to this API (or it is another owner's)."""

    status = 404


class ScheduleNotFound(ErrandError):
    """No schedule with that id (or it is another owner's)."""

    status = 404


class StateConflict(ErrandError):
    """The task's state does not allow what was asked."""

    status = 409


class Unprocessable(ErrandError):
    """The request is well-formed JSON, but its content is not valid."""

    status = 422


class TooManyRequests(ErrandError):
    """The key has spent one of its limits; ``headers`` say which and until when."""

    status = 429


class RateLimited(TooManyRequests):
    """The key's rate window for this kind of request is spent."""

    def __init__(self, name: str, amount: int, window: int, reset: int) -> None:
        super().__init__(f"this key may make {amount} {name} requests per {window} s")
        reset = max(1, reset)
        self.headers["Retry-After"] = str(reset)
        self.headers["RateLimit-Policy"] = f'"{name}";q={amount};w={window}'
        self.headers["RateLimit"] = f'"{name}";r=0;t={reset}'


class TooManyInFlight(TooManyRequests):
    """The key has as many unfinished tasks as it may have."""

    def __init__(self, detail: str, retry_after: int, limit: int) -> None:
        super().__init__(detail)
        self.headers["Retry-After"] = str(retry_after)
        self.headers["RateLimit-Policy"] = f'"in-flight";q={limit}'
        self.headers["RateLimit"] = f'"in-flight";r=0;t={retry_after}'


class Unavailable(ErrandError):
    """A dependency did not answer in time; the client may try again later."""

    status = 503
    retry_after = 5

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.headers["Retry-After"] = str(self.retry_after)


class BrokerUnavailable(Unavailable):
    """The broker did not answer in time."""


class StoreUnavailable(Unavailable):
    """The Redis that keeps task records and results did not answer in time."""


class MailUnavailable(Unavailable):
    """The SMTP server could not take a message now."""
