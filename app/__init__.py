"""Errand: a Flask JSON API that hands slow jobs to Celery and reports how they go."""

from __future__ import annotations

import importlib
from typing import Any

from flask import Flask

import config
from app import (  # noqa: F401  (mail and tasks declare task types)
    api,
    auth,
    errors,
    extensions,
    health,
    limits,
    log,
    mail,
    metrics,
    ops,
    security,
    tasks,
)
from app.celery_app import celery_init_app


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Create the application: configuration, extensions, Celery, errors, routes."""
    app = Flask(__name__)
    app.config.from_mapping(config.load())
    if test_config is not None:
        app.config.from_mapping(test_config)

    for module in app.config["TASK_MODULES"]:
        importlib.import_module(module)  # a team's own task types
    if app.config["ERRAND_ENV"] == "production" and app.debug:
        raise config.ConfigError("debug must be off when ERRAND_ENV=production")
    log.init_app(app)
    auth.init_app(app)  # before the rate limits: they count per key
    limits.init_app(app)
    extensions.init_app(app)
    celery_app = celery_init_app(app)
    metrics.init_worker(celery_app, app)
    metrics.init_app(app)
    errors.init_app(app)
    security.init_app(app)
    app.register_blueprint(api.bp)
    app.register_blueprint(ops.bp)
    app.register_blueprint(health.bp)
    return app
