"""Logging, as text or JSON, with a request id that follows a job into the worker.

The API takes the client's ``X-Request-ID`` (or makes one), answers with it, and
sends it with the task as the ``errand_request_id`` header; the worker's log
lines for that task carry the same ``request_id`` and the ``task_id``.
"""

from __future__ import annotations

import logging
import re
import secrets

from celery import current_task
from flask import Flask, g, has_app_context, request
from pythonjsonlogger.json import JsonFormatter

_VALID_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s %(task_id)s] %(message)s"
JSON_FIELDS = ["asctime", "levelname", "name", "message", "request_id", "task_id"]


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` and ``task_id`` to every log record (``-`` where there is none)."""

    def filter(self, record: logging.LogRecord) -> bool:
        request_id, task_id = "-", "-"
        if has_app_context() and "request_id" in g:  # a request's (Flask's or app.web.fast's)
            request_id = g.request_id
        else:
            task = current_task
            if task and task.request.id:
                task_id = task.request.id
                request_id = getattr(task.request, "errand_request_id", None) or "-"
        record.request_id = getattr(record, "request_id", request_id)
        record.task_id = getattr(record, "task_id", task_id)
        return True


# Log lines carry ids and counts, not the people jobs are for: an email address
# anywhere in a line (a refused recipient, an exception's text) is masked.
_ADDRESS = re.compile(r"[^\s@<>\"'(),;:\[\]]+@[^\s@<>\"'(),;:\[\]]+\.[A-Za-z0-9-]+")


def redact(text: str) -> str:
    """``text`` with every email address replaced by ``<address>``."""
    return _ADDRESS.sub("<address>", text) if "@" in text else text


class Redacting(logging.Formatter):
    """Formats with another formatter, then masks what a log line must not carry."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        line = self.inner.format(record)
        # Lines of a request or a task, or about one (Celery's trace): where client data is.
        about_a_job = (
            getattr(record, "task_id", "-") != "-" or getattr(record, "request_id", "-") != "-"
        )
        return redact(line) if about_a_job or record.name.startswith("celery.app") else line


def handler(log_format: str) -> logging.Handler:
    """A stderr handler in the chosen format (``text`` or ``json``)."""
    stream = logging.StreamHandler()
    inner: logging.Formatter
    if log_format == "json":
        inner = JsonFormatter(JSON_FIELDS, rename_fields={"levelname": "level", "name": "logger"})
    else:
        inner = logging.Formatter(TEXT_FORMAT)
    stream.setFormatter(Redacting(inner))
    stream.addFilter(RequestIdFilter())
    return stream


def configure(level: str, log_format: str) -> None:
    """Send every logger (ours, Flask's, Celery's) through one handler."""
    root = logging.getLogger()
    root.handlers[:] = [handler(log_format)]
    root.setLevel(level)
    ours = logging.getLogger("app")
    ours.handlers[:] = []
    ours.propagate = True


def init_app(app: Flask) -> None:
    """Configure logging; ``app.web`` gives every request its id (``assign_request_id``)."""
    configure(app.config["LOG_LEVEL"], app.config["LOG_FORMAT"])


def request_id_of(given: str) -> str:
    """A request's id: the client's ``X-Request-ID`` (``given``) if sane, else a new one."""
    return given if given and _VALID_ID.match(given) else secrets.token_hex(16)


def assign_request_id() -> None:
    """The request's id, kept in ``g`` (``request_id_of``)."""
    g.request_id = request_id_of(request.headers.get("X-Request-ID", ""))
