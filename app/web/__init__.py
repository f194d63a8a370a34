"""Everything HTTP: the blueprints and the hooks every request passes through."""

from __future__ import annotations

from flask import Flask

from app.web import auth, health, limits, operations, problems, security, tasks


def init_app(app: Flask) -> None:
    """Hooks in the order a request meets them, then errors and routes."""
    auth.init_app(app)  # before the rate limits: they count per key
    limits.init_app(app)
    problems.init_app(app)
    security.init_app(app)
    app.register_blueprint(tasks.bp)
    app.register_blueprint(operations.bp)
    app.register_blueprint(health.bp)
