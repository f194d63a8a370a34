"""The Flask docs' Celery recipe, as the baseline Errand is compared with.

``POST /add`` calls ``add.delay``; ``GET /result/<id>`` reads ``AsyncResult``
(without ``.get()``, which would block and re-raise).
"""

from __future__ import annotations

import os

from celery import Celery, Task, shared_task
from celery.result import AsyncResult
from flask import Flask, request


def create_app() -> Flask:
    app = Flask(__name__)
    url = os.environ["REDIS_URL"]

    class FlaskTask(Task):
        def __call__(self, *args: object, **kwargs: object) -> object:
            with app.app_context():
                return self.run(*args, **kwargs)

    celery_app = Celery(app.name, task_cls=FlaskTask, broker=url, backend=url)
    celery_app.set_default()
    app.extensions["celery"] = celery_app

    @app.post("/add")
    def start_add() -> dict[str, object]:
        body = request.get_json()
        result = add.delay(body["a"], body["b"])
        return {"result_id": result.id}

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/result/<task_id>")
    def task_result(task_id: str) -> dict[str, object]:
        result = AsyncResult(task_id)
        return {"ready": result.ready(), "state": result.state}

    return app


@shared_task(ignore_result=False)
def add(a: int, b: int) -> int:
    return a + b


app = create_app()
