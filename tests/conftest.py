"""Fixtures: a private Redis server, a real Celery worker, the app and its client."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.support import Process, RedisServer, SmtpSink, Worker, errand_env, make_app


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def unread_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A Redis of the test module's own that no worker reads: its keys change only by the
    module's tests (for tests that compare keys before and after, or queue what must not run)."""
    server = RedisServer(tmp_path_factory.mktemp("unread"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def app(redis_server: RedisServer) -> Flask:
    return make_app(redis_server.url)


@pytest.fixture(scope="session")
def smtp_server() -> Iterator[SmtpSink]:
    sink = SmtpSink()
    sink.start()
    try:
        yield sink
    finally:
        sink.stop()


@pytest.fixture(scope="session")
def worker(
    redis_server: RedisServer, smtp_server: SmtpSink, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Worker]:
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    env = errand_env(redis_server.url, MAIL_SERVER="127.0.0.1", MAIL_PORT=str(smtp_server.port))
    with Worker(env, log, "main") as proc:
        yield proc


@pytest.fixture()
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture()
def stack(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Start processes for one test; every one is stopped afterwards, whatever happens.

    ``stack("redis", aof=False)``, ``stack("worker", env, log, name, concurrency=2)``,
    ``stack("smtp", delay=0.0, started=True)``, ``stack("process", command, log, env)``.
    """
    started: list[Any] = []

    def start(kind: str, *args: Any, started_now: bool = True, **kwargs: Any) -> Any:
        kinds: dict[str, Callable[..., Any]] = {
            "redis": lambda *a, **k: RedisServer(tmp_path / f"redis{len(started)}", *a, **k),
            "worker": Worker,
            "smtp": SmtpSink,
            "process": Process,
        }
        proc = kinds[kind](*args, **kwargs)
        started.append(proc)
        if started_now:
            proc.start()
        return proc

    try:
        yield start
    finally:
        for proc in reversed(started):
            with contextlib.suppress(Exception):
                proc.stop()


# Tests that start worker or server processes are slow; `scripts/test --fast` skips them.
SLOW_FIXTURES = {"worker", "stack"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
