"""Errand's core guarantees under each worker pool: prefork, threads and gevent.

The key tests of test_lifecycle.py and test_reliability.py, once per pool (solo is
measured in bench/pools.py): a job runs to SUCCESS with progress; a cancel of a queued
job holds; a cancel of a running job stops it (prefork terminates the child; threads
and gevent stop it at its next progress report, ``app.tasks.registry.Cancelled``); the
lease keeps a job longer than VISIBILITY_TIMEOUT from being delivered again; SIGTERM
lets a running job finish within WORKER_SHUTDOWN_GRACE, or hands it back to run again; a
killed worker's job comes back to a worker of the same pool.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.support import (
    RedisServer,
    Worker,
    errand_env,
    make_app,
    runs,
    settle,
    submit,
    wait_for,
    wait_state,
)

POOLS = ["prefork", "threads", "gevent"]

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module", params=POOLS)
def pool(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture(scope="module")
def pool_worker(
    redis_server: RedisServer, pool: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Worker]:
    log = tmp_path_factory.mktemp(f"pool-{pool}") / "worker.log"
    with Worker(errand_env(redis_server.url), log, f"pool-{pool}", pool=pool) as proc:
        yield proc


def test_progress_to_success(client: FlaskClient, pool_worker: Worker) -> None:
    url = submit(client, "demo.progress", {"steps": 4, "delay": 0.3})
    seen: list[str] = []

    def finished() -> bool:
        task = client.get(url).json
        if not seen or seen[-1] != task["state"]:
            seen.append(task["state"])
        return bool(task["state"] == "SUCCESS")

    wait_for(finished, 30, 0.02)
    assert {"STARTED", "PROGRESS"} <= set(seen), seen
    task = client.get(url).json
    assert task["result"] == {"steps": 4}
    assert task["progress"]["current"] == 4


def test_cancel_queued_never_runs(
    client: FlaskClient, pool_worker: Worker, redis_server: RedisServer
) -> None:
    url = submit(client, "test.echo", {"value": 1}, countdown=2)
    assert client.delete(url).json["state"] == "REVOKED"
    settle(3)
    task = client.get(url).json
    assert task["state"] == "REVOKED" and task["started_at"] is None
    assert runs(redis_server.client(), url) == 0


def test_cancel_running_stops_it(client: FlaskClient, pool_worker: Worker) -> None:
    url = submit(client, "demo.progress", {"steps": 100, "delay": 0.1})
    wait_state(client, url, {"PROGRESS"})
    assert client.delete(url).json["state"] == "REVOKED"
    settle(0.5)  # a report in flight as the cancel landed may still arrive
    stopped = client.get(url).json["progress"]
    settle(1)
    task = client.get(url).json
    assert task["state"] == "REVOKED"
    assert task["progress"] == stopped  # no further progress: the task stopped
    assert stopped["current"] < 100
    assert "SUCCESS" not in str(task)
    # The worker lives on and takes new jobs.
    assert wait_state(client, submit(client, "test.echo", {"value": 2}))["state"] == "SUCCESS"


def test_lease_keeps_a_long_job_from_running_twice(stack: Any, tmp_path: Path, pool: str) -> None:
    server = stack("redis")
    # VISIBILITY_TIMEOUT 4 (errand_env): without the lease, the idle second worker would
    # be handed the job again after about 5 s.
    env = errand_env(server.url)
    stack("worker", env, tmp_path / "long.log", "long", pool=pool)
    client = make_app(server.url).test_client()
    url = submit(client, "test.sleep", {"seconds": 9})
    wait_for(lambda: runs(server.client(), url) == 1, 20)
    stack("worker", env, tmp_path / "idle.log", "idle")
    task = wait_state(client, url, timeout=30)
    assert task["state"] == "SUCCESS"
    settle(1)
    assert runs(server.client(), url) == 1


def test_sigterm_finishes_within_grace_or_hands_back(stack: Any, tmp_path: Path, pool: str) -> None:
    server = stack("redis")
    env = errand_env(server.url, WORKER_SHUTDOWN_GRACE="3")
    first = stack("worker", env, tmp_path / "first.log", "first", pool=pool)
    client = make_app(server.url).test_client()
    short = submit(client, "test.sleep", {"seconds": 1})
    long = submit(client, "test.sleep", {"seconds": 8})
    store = server.client()
    wait_for(lambda: runs(store, short) == 1 and runs(store, long) == 1, 20)
    assert first.proc is not None
    first.proc.send_signal(signal.SIGTERM)  # the main process only, as docker stop does
    first.proc.wait(20)
    assert wait_state(client, short, timeout=5)["state"] == "SUCCESS"
    stack("worker", env, tmp_path / "second.log", "second", pool=pool)
    assert wait_state(client, long, timeout=40)["state"] == "SUCCESS"
    settle(1)
    assert runs(store, short) == 1  # finished within the grace: never again
    assert runs(store, long) in {1, 2}  # finished, or stopped and run again: never lost


def test_a_killed_workers_job_comes_back(stack: Any, tmp_path: Path, pool: str) -> None:
    server = stack("redis")
    env = errand_env(server.url)
    first = stack("worker", env, tmp_path / "first.log", "first", pool=pool)
    client = make_app(server.url).test_client()
    url = submit(client, "test.sleep", {"seconds": 2})
    wait_for(lambda: runs(server.client(), url) == 1, 20)
    first.kill()  # kill -9, main process and pool: nothing is handed back
    # The same pool: under gevent kombu's own sweep never runs (app.worker.lease sweeps).
    stack("worker", env, tmp_path / "second.log", "second", pool=pool)
    assert wait_state(client, url, timeout=30)["state"] == "SUCCESS"
    assert runs(server.client(), url) == 2
