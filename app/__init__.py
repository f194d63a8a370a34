"""Errand: a Flask JSON API that hands slow jobs to Celery and reports how they go."""

from __future__ import annotations

from typing import Any

from flask import Flask

import config
from app import cli, log, metrics, store, web
from app.extensions import mail
from app.jobs import Jobs
from app.jobs.schedules import Schedules
from app.jobs.workflows import Workflows
from app.tasks import BUILT_IN, registry, routing
from app.worker import celery_init_app


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Create the application: settings, Redis, task types, Celery, jobs, the web."""
    app = Flask(__name__)
    app.config.from_mapping(config.load())
    if test_config is not None:
        app.config.from_mapping(test_config)
    if app.config["ERRAND_ENV"] == "production" and app.debug:
        raise config.ConfigError("debug must be off when ERRAND_ENV=production")

    log.init_app(app)
    mail.init_app(app)
    client = store.connect(app.config["REDIS_URL"], app.config, app.config["REDIS_MAX_CONNECTIONS"])
    app.extensions["errand.redis"] = client
    task_types = routing.resolve(
        registry.build([*BUILT_IN, *app.config["TASK_MODULES"]]),
        app.config["TASK_ROUTES"],
        app.config["CELERY"]["task_default_queue"],
    )
    app.extensions["errand.task_types"] = task_types
    celery_app = celery_init_app(app)  # also registers errand's own periodic jobs
    jobs = app.extensions["errand.jobs"] = Jobs(client, celery_app, task_types, app.config)
    app.extensions["errand.schedules"] = Schedules(client, jobs, task_types, app.config)
    app.extensions["errand.workflows"] = Workflows(jobs)
    metrics.init_app(app)
    web.init_app(app)
    cli.init_app(app)
    return app
