"""Errand: a Flask JSON API that hands slow jobs to Celery and reports how they go."""

from __future__ import annotations

import importlib
from typing import Any

from flask import Flask

import config
from app import api, errors, extensions, health, log, mail, metrics, ops, tasks  # noqa: F401  (task types)
from app.celery_app import celery_init_app


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Create the application: configuration, extensions, Celery, errors, routes."""
    app = Flask(__name__)
    app.config.from_mapping(config.load())
    if test_config is not None:
        app.config.from_mapping(test_config)

    for module in app.config["TASK_MODULES"]:
        importlib.import_module(module)  # a team's own task types
    log.init_app(app)
    extensions.init_app(app)
    celery_app = celery_init_app(app)
    metrics.init_worker(celery_app, app)
    metrics.init_app(app)
    errors.init_app(app)
    app.register_blueprint(api.bp)
    app.register_blueprint(ops.bp)
    app.register_blueprint(health.bp)
    return app
