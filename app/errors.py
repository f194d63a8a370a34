"""Errand's HTTP errors, all answered as problem+json (RFC 9457).

    APIError
    ├── InvalidBody       400  the body is not a JSON object
    ├── Unauthenticated   401  no API key, or a wrong or revoked one
    ├── TaskNotFound      404  unknown, expired, or not yours
    ├── StateConflict     409  the task's state does not allow it (cancel a final task)
    ├── Unprocessable     422  unknown task type, bad params, options or filters
    ├── TooManyInFlight   429  the key has as many unfinished tasks as it may
    └── BrokerUnavailable 503  the broker or the record store did not answer

Werkzeug's own HTTP errors (404, 405, 413, 415, ...) and unexpected
exceptions (500) come out in the same shape.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import redis
from flask import Flask, Response, g, json
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)

PROBLEM = "application/problem+json"


class APIError(Exception):
    """An error with an HTTP status, answered as problem+json."""

    status = 500

    def __init__(self, detail: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        self.headers: dict[str, str] = {}


class InvalidBody(APIError):
    """The body is not a JSON object."""

    status = 400


class Unauthenticated(APIError):
    """No API key, or a wrong or revoked one."""

    status = 401

    def __init__(self, detail: str, error: str | None = None) -> None:
        super().__init__(detail)
        challenge = 'Bearer realm="errand"' + (f', error="{error}"' if error else "")
        self.headers["WWW-Authenticate"] = challenge


class TaskNotFound(APIError):
    """No task with that id is known to this API."""

    status = 404


class StateConflict(APIError):
    """The task's state does not allow what was asked."""

    status = 409


class Unprocessable(APIError):
    """The request is well-formed JSON, but its content is not valid."""

    status = 422


class TooManyInFlight(APIError):
    """The key has as many unfinished tasks as it may have."""

    status = 429

    def __init__(self, detail: str, retry_after: int, limit: int) -> None:
        super().__init__(detail)
        self.headers["Retry-After"] = str(retry_after)
        self.headers["RateLimit-Policy"] = f'"in-flight";q={limit}'
        self.headers["RateLimit"] = f'"in-flight";r=0;t={retry_after}'


class BrokerUnavailable(APIError):
    """The broker or the record store did not answer in time."""

    status = 503

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.headers["Retry-After"] = "5"


def problem(
    status: int,
    detail: str,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """A problem+json response."""
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if errors is not None:
        body["errors"] = errors
    response = Response(json.dumps(body), status=status, mimetype=PROBLEM)
    response.headers.update(headers or {})
    return response


def handle_api_error(error: APIError) -> Response:
    return problem(error.status, error.detail, error.errors, error.headers)


def handle_http_exception(error: HTTPException) -> Response:
    headers = {k: v for k, v in error.get_headers() if k.lower() not in {"content-type"}}
    status = error.code or 500
    return problem(status, error.description or HTTPStatus(status).phrase, headers=headers)


def handle_store_down(error: redis.RedisError) -> Response:
    log.warning("Redis did not answer: %s", error)
    return problem(503, "the task store did not answer", headers={"Retry-After": "5"})


def handle_unexpected(error: Exception) -> Response:
    request_id = g.get("request_id", "-")
    log.exception("unexpected error in request %s", request_id)
    return problem(500, f"an unexpected error occurred; request id {request_id}")


def init_app(app: Flask) -> None:
    """Send every error through problem+json."""
    app.register_error_handler(APIError, handle_api_error)
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(redis.RedisError, handle_store_down)
    app.register_error_handler(Exception, handle_unexpected)
