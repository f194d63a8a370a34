"""Submit and status reads, answered without Flask's request machinery.

``FastPath`` wraps the Flask app's WSGI callable. It answers the two routes
clients call most, ``POST /api/v1/tasks`` and ``GET /api/v1/tasks/<id>``, in
their plain form: a key (or ``AUTH_DISABLED``), no query string, and
for a submit a JSON body (``Content-Type: application/json``,
a ``Content-Length`` up to 64 KiB) with no ``callback_url``. It calls what the
views call (``app.web.tasks``, ``app.web.auth``, ``app.web.limits``, hence
``Jobs`` and its scripts) and builds the answer once, with the headers and
metrics of Flask's hooks (``app.web``, ``app.metrics``). A status read runs
outside Flask's contexts altogether (what it needs of the app is taken once, and
``auth.check`` and ``limits.window`` are the context-free halves of what the
views call); an app context is pushed only for its errors.

Everything else goes to Flask unchanged: other routes and methods, a query
string (``?wait=``), every request when ``CORS_ORIGINS`` is set, other bodies;
and so does a request it took up whose answer would be an error before anything
happened (no key or a wrong one, a body that is not a valid submit), with its
body handed on as read. An error once the job service was called (a limit, a
404, Redis down) is answered by Flask's own error handlers and after-request
hooks, as a view's would be.
``FAST_PATH=false`` sends everything to Flask; tests/test_fast.py checks that
both answer every variant alike.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask
from werkzeug.http import HTTP_STATUS_CODES

from app.errors import ErrandError
from app.jobs import Jobs
from app.jobs.service import OPEN_ACCESS, Principal
from app.log import request_id_of
from app.metrics import count_submit, observe_request
from app.tasks.registry import Registry
from app.web import auth, tasks
from app.web.limits import rate_limit_headers, window
from app.web.live import body_and_etag, matches
from app.web.security import API_HEADERS

StartResponse = Callable[..., Any]
JSON = ("Content-Type", "application/json")


def _status_line(code: int) -> str:
    return f"{code} {HTTP_STATUS_CODES[code].upper()}"  # as Werkzeug's responses have it


OK, ACCEPTED, NOT_MODIFIED = _status_line(200), _status_line(202), _status_line(304)


class FallThrough(Exception):
    """Flask answers this request: it is not one the fast path answers exactly alike."""


class FastPath:
    """The WSGI app: the two hot routes here, everything else through ``flask``."""

    def __init__(self, app: Flask) -> None:
        self.app, self.flask = app, app.wsgi_app
        self.submit_route = _rule(app, "tasks.submit")  # /api/v1/tasks
        self.status_route = _rule(app, "tasks.status")  # /api/v1/tasks/<task_id>
        self.status_prefix = self.status_route.split("<", 1)[0]
        self.max_body = min(tasks.LARGE_BODY, app.config["MAX_CONTENT_LENGTH"])
        self.auth_disabled = app.config["AUTH_DISABLED"]
        # What a status read needs of the app, taken once: it runs outside Flask's contexts.
        self.jobs: Jobs = app.extensions["errand.jobs"]
        self.store = app.extensions["errand.redis"]
        self.key_cache_seconds = app.config["KEY_CACHE_SECONDS"]
        self.read_limit = app.config["RATE_LIMIT_READ"]
        self.submit_limit = app.config["RATE_LIMIT_SUBMIT"]
        self.registry: Registry = app.extensions["errand.task_types"]

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        if environ.get("QUERY_STRING"):
            return self.flask(environ, start_response)
        if method == "POST" and path == self.submit_route:
            answer = self._answer(self._submit, self.submit_route, environ, start_response)
        elif method == "GET" and path.startswith(self.status_prefix):
            answer = self._status(environ, start_response)
        else:
            return self.flask(environ, start_response)
        return self.flask(environ, start_response) if answer is None else answer

    def _answer(
        self,
        handler: Callable[[dict[str, Any], Any], tuple[str, bytes, list[tuple[str, str]]]],
        route: str,
        environ: dict[str, Any],
        start_response: StartResponse,
    ) -> Iterable[bytes] | None:
        """The answer of ``handler``, or None when Flask is to answer instead."""
        with self.app.app_context() as context:  # what the views use: config, the services, g
            state = context.g  # the object behind ``g``, without its proxy at each use
            state.started = time.perf_counter()
            state.request_id = request_id_of(environ.get("HTTP_X_REQUEST_ID", ""))
            try:
                status, body, headers = handler(environ, state)
            except FallThrough:
                return None
            except Exception as error:  # answered as Flask answers a view's
                return self._error(error, environ, start_response)
            rate = state.get("rate")
            if rate is not None:
                headers += rate_limit_headers(*rate)
            headers += API_HEADERS
            headers.append(("X-Request-ID", state.request_id))
            code = int(status[:3])
            observe_request(environ["REQUEST_METHOD"], route, code, state.started)
            if route == self.submit_route:
                count_submit(state.get("task_type", "unknown"), code)
        start_response(status, headers)
        return [body]

    def _error(
        self, error: Exception, environ: dict[str, Any], start_response: StartResponse
    ) -> Iterable[bytes]:
        """Flask's answer to ``error`` raised in a view: its handlers, then its hooks."""
        with self.app.request_context(environ):  # in this app context: g is kept
            response = self.app.finalize_request(self.app.handle_user_exception(error))
            return response(environ, start_response)  # type: ignore[no-any-return]

    def _caller(self, environ: dict[str, Any]) -> Principal | None:
        """Who calls, as ``app.web.auth`` decides it; None for Flask to answer (a 401)."""
        if self.auth_disabled:
            return OPEN_ACCESS
        key = auth.bearer(environ.get("HTTP_AUTHORIZATION", ""))
        return auth.check(key, self.store, self.key_cache_seconds) if key is not None else None

    def _submit(
        self, environ: dict[str, Any], state: Any
    ) -> tuple[str, bytes, list[tuple[str, str]]]:
        """A submit, as ``tasks.submit`` answers it, in an app context (``state`` is its ``g``).

        The context is there for what a task type's checks read of the app's settings,
        and for the log lines of a failed submit (their request id); the rest is given.
        """
        length = environ.get("CONTENT_LENGTH", "")
        if (
            environ.get("CONTENT_TYPE") != "application/json"
            or "HTTP_TRANSFER_ENCODING" in environ  # Werkzeug reads no Content-Length then
            or not (length.isascii() and length.isdigit() and 0 < int(length) <= self.max_body)
        ):
            raise FallThrough
        principal = self._caller(environ)
        if principal is None:
            raise FallThrough  # Flask's 401
        state.principal = principal
        raw = environ["wsgi.input"].read(int(length))
        try:
            submission, task_type = tasks.read_submission(tasks.parse_object(raw), self.registry)
            # An unknown type's 422 and a callback_url's checks are the view's alone.
            if task_type is None or submission.callback_url is not None:
                raise FallThrough
            state.task_type = submission.task  # for the metrics, as submission_of keeps it
            params = tasks.validated(task_type, submission.params)
            idempotency = tasks.idempotency_key_of(environ.get("HTTP_IDEMPOTENCY_KEY"))
        except (ErrandError, FallThrough):
            environ["wsgi.input"] = io.BytesIO(raw)  # Flask reads the same body
            raise FallThrough from None
        limit = window("submit", self.submit_limit, principal, _remote(environ))
        task, usage = tasks.submit_as(
            self.jobs, principal, submission, task_type, params, idempotency, state.request_id,
            limit,
        )  # fmt: skip
        if limit is not None and usage is not None:
            state.rate = (limit, usage)  # as limits.spent keeps it
        body, etag = body_and_etag(task)
        headers = [JSON, ("Content-Length", str(len(body))), *tasks.task_headers(task, etag, True)]
        return ACCEPTED, body, headers

    def _status(
        self, environ: dict[str, Any], start_response: StartResponse
    ) -> Iterable[bytes] | None:
        """A status read, as ``tasks.status`` answers it, without Flask's contexts.

        It reads what ``tasks.read`` reads (the key, the read window, the job service's
        one script) from what ``__init__`` took of the app; an app context is pushed
        only for an error, which Flask's handlers answer as they would the view's.
        """
        started = time.perf_counter()
        task_id = environ["PATH_INFO"][len(self.status_prefix) :]
        if not tasks.is_task_id(task_id):
            return None  # Flask's 404 (or another route's answer)
        request_id = request_id_of(environ.get("HTTP_X_REQUEST_ID", ""))
        principal = None
        try:
            principal = self._caller(environ)
            if principal is None:
                return None  # Flask's 401
            limit = window("read", self.read_limit, principal, _remote(environ))
            task, usage = self.jobs.read(principal, task_id, limit)
        except Exception as error:  # answered as Flask answers a view's
            with self.app.app_context() as context:
                state = context.g
                state.started, state.request_id = started, request_id
                if principal is not None:
                    state.principal = principal
                return self._error(error, environ, start_response)
        body, etag = body_and_etag(task)
        if matches(environ.get("HTTP_IF_NONE_MATCH"), etag):
            status, body, headers = NOT_MODIFIED, b"", [("ETag", etag)]
        else:
            status = OK
            headers = [JSON, ("Content-Length", str(len(body))), *tasks.task_headers(task, etag)]
        if limit is not None and usage is not None:
            headers += rate_limit_headers(limit, usage)
        headers += API_HEADERS
        headers.append(("X-Request-ID", request_id))
        observe_request("GET", self.status_route, int(status[:3]), started)
        start_response(status, headers)
        return [body]


def _remote(environ: dict[str, Any]) -> str:
    return str(environ.get("REMOTE_ADDR"))  # as Werkzeug's request.remote_addr reads it


def _rule(app: Flask, endpoint: str) -> str:
    return next(rule.rule for rule in app.url_map.iter_rules(endpoint))


def init_app(app: Flask) -> None:
    """Put the fast path in front of Flask, unless ``FAST_PATH`` is off or CORS is on.

    flask-cors adds its headers to every answer once ``CORS_ORIGINS`` names origins
    (with an ``Origin`` header or without): those deployments keep Flask's path.
    """
    if app.config["FAST_PATH"] and not app.config["CORS_ORIGINS"]:
        app.wsgi_app = FastPath(app)  # type: ignore[method-assign]
