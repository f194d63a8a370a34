"""Fixtures: a private Redis server, a real Celery worker, the app and its client."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from app import create_app
from app.jobs.resource import FINAL_STATES
from tests.support import RedisServer, SmtpSink, Worker, errand_env, wait_for


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


def make_app(redis_url: str, **env: str) -> Flask:
    """An Errand app configured, as in production, from the environment."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in errand_env(redis_url, **env).items():
            patch.setenv(name, value)
        return create_app({"TESTING": True})


@pytest.fixture(scope="session")
def app(redis_server: RedisServer) -> Flask:
    return make_app(redis_server.url)


@pytest.fixture(scope="session")
def smtp_server() -> Iterator[SmtpSink]:
    sink = SmtpSink()
    sink.start()
    yield sink
    sink.stop()


@pytest.fixture(scope="session")
def worker(
    redis_server: RedisServer, smtp_server: SmtpSink, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Worker]:
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    env = errand_env(redis_server.url, MAIL_SERVER="127.0.0.1", MAIL_PORT=str(smtp_server.port))
    proc = Worker(env, log, "main")
    try:
        proc.start()
        yield proc
    finally:
        proc.stop()


@pytest.fixture()
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture()
def stack(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Start private Redis servers and workers for one test; all stopped afterwards."""
    started: list[Any] = []

    def start(kind: str, *args: Any, **kwargs: Any) -> Any:
        if kind == "redis":
            proc: Any = RedisServer(tmp_path / f"redis{len(started)}", *args, **kwargs)
        else:
            proc = Worker(*args, **kwargs)
        started.append(proc)
        proc.start()
        return proc

    try:
        yield start
    finally:
        for proc in reversed(started):
            with contextlib.suppress(Exception):
                proc.stop()


def submit(client: FlaskClient, task: str, params: dict[str, Any], **options: Any) -> str:
    """Submit a job and return its status URL."""
    body: dict[str, Any] = {"task": task, "params": params}
    if options:
        body["options"] = options
    response = client.post("/api/v1/tasks", json=body)
    assert response.status_code == 202, response.json
    return str(response.headers["Location"])


def wait_state(
    client: FlaskClient, url: str, states: set[str] | None = None, timeout: float = 30
) -> dict[str, Any]:
    """Poll a task until it reaches one of ``states`` (default: any final state)."""
    wanted = states or FINAL_STATES

    def reached() -> dict[str, Any] | None:
        task = client.get(url).json
        assert task is not None
        return task if task["state"] in wanted else None

    return wait_for(reached, timeout, 0.05)


def runs(store: Any, url: str) -> int:
    """How many times the task behind ``url`` ran (tests.tasktypes counts)."""
    return int(store.get(f"test:runs:{url.rsplit('/', 1)[-1]}") or 0)


def settle(seconds: float) -> None:
    """Give the worker time to do something it must not do (e.g. run a cancelled job)."""
    time.sleep(seconds)
