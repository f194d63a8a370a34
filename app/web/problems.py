"""Every error answered as problem+json (RFC 9457): Errand's, Werkzeug's, and the unexpected."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import redis
from flask import Flask, Response, g, json
from werkzeug.exceptions import HTTPException

from app.errors import ErrandError, StoreUnavailable

log = logging.getLogger(__name__)

PROBLEM = "application/problem+json"
# RFC 9110's names, whichever Python runs (3.11's HTTPStatus still has the older ones).
TITLES = {413: "Content Too Large", 422: "Unprocessable Content"}


def problem(
    status: int,
    detail: str,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """A problem+json response."""
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": TITLES.get(status) or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if errors is not None:
        body["errors"] = errors
    response = Response(json.dumps(body), status=status, mimetype=PROBLEM)
    response.headers.update(headers or {})
    return response


def handle_errand_error(error: ErrandError) -> Response:
    return problem(error.status, error.detail, error.errors, error.headers)


def handle_store_error(error: redis.RedisError) -> Response:
    # Where a Redis error escapes without being named (the key check, say), it
    # is the task store that did not answer: the same 503 as everywhere.
    log.warning("Redis did not answer: %s", error)
    return handle_errand_error(StoreUnavailable("the task store did not answer"))


def handle_http_exception(error: HTTPException) -> Response:
    headers = {k: v for k, v in error.get_headers() if k.lower() not in {"content-type"}}
    status = error.code or 500
    return problem(status, error.description or HTTPStatus(status).phrase, headers=headers)


def handle_unexpected(error: Exception) -> Response:
    request_id = g.get("request_id", "-")
    log.exception("unexpected error in request %s", request_id)
    return problem(500, f"an unexpected error occurred; request id {request_id}")


def init_app(app: Flask) -> None:
    """Send every error through problem+json."""
    app.register_error_handler(ErrandError, handle_errand_error)
    app.register_error_handler(redis.RedisError, handle_store_error)
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(Exception, handle_unexpected)
