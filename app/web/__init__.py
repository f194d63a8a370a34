"""Everything HTTP: the blueprints and the hooks every request passes through."""

from __future__ import annotations

from flask import Flask, Response, g
from flask.sessions import SessionInterface

from app.log import assign_request_id
from app.web import (
    auth,
    fast,
    health,
    limits,
    openapi,
    operations,
    page,
    problems,
    schedules,
    security,
    tasks,
    workflows,
)


class NoSessions(SessionInterface):
    """Errand is an API with keys: it keeps no cookie session, so reads none."""

    def open_session(self, app: Flask, request: object) -> None:
        return None  # Flask then uses a null session, and never saves it


def before_request() -> None:
    """Before every request, in this order: its id, who calls, the rate window."""
    assign_request_id()
    auth.authenticate()
    limits.count_request()


def after_request(response: Response) -> Response:
    """After every request: the rate limit, security headers and the request id."""
    limits.add_rate_limit_headers(response)
    security.add_security_headers(response)
    response.headers["X-Request-ID"] = g.get("request_id", "")
    return response


def init_app(app: Flask) -> None:
    """The hooks, errors and routes of the HTTP API."""
    app.session_interface = NoSessions()
    app.before_request(before_request)
    app.after_request(after_request)
    auth.init_app(app)
    problems.init_app(app)
    security.init_app(app)
    app.register_blueprint(tasks.bp)
    app.register_blueprint(schedules.bp)
    app.register_blueprint(workflows.bp)
    app.register_blueprint(operations.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(page.bp)
    fast.init_app(app)  # last: it reads the routes
