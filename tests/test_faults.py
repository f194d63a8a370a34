"""Faults on real processes: a broker that dies or hangs, workers killed mid-job."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

from tests.support import (
    BIN,
    Api,
    errand_env,
    make_app,
    runs,
    settle,
    submit,
    wait_for,
    wait_state,
)


def queued(server: Any) -> int:
    client = server.client()
    return sum(
        int(client.llen(key)) for key in client.scan_iter("celery*") if client.type(key) == b"list"
    )


def test_submit_with_redis_killed_is_503_then_recovers(stack: Any) -> None:
    server = stack("redis", aof=True)
    client = make_app(server.url).test_client()
    first = submit(client, "test.echo", {"value": 1})  # warm connections, as in a live API
    server.kill()

    for reply in (client.get(first), client.get("/api/v1/tasks"), client.delete(first)):
        assert reply.status_code == 503
        assert reply.mimetype == "application/problem+json"
        assert reply.headers["Retry-After"]

    started = time.monotonic()
    response = client.post("/api/v1/tasks", json={"task": "test.echo", "params": {"value": 2}})
    assert time.monotonic() - started < 5
    assert response.status_code == 503
    assert response.mimetype == "application/problem+json"
    assert response.headers["Retry-After"]

    server.start()  # same port, same append-only file
    assert server.client().zcard("errand:index") == 1  # only the submit that succeeded
    assert queued(server) == 1
    url = submit(client, "test.echo", {"value": 3})  # no restart needed
    assert client.get(url).json["state"] == "PENDING"


def test_submit_with_redis_hung_is_503_and_leaves_nothing(stack: Any, tmp_path: Path) -> None:
    server = stack("redis")
    client = make_app(server.url).test_client()
    warm = submit(client, "test.echo", {"value": 1}).rsplit("/", 1)[-1]
    server.signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        response = client.post(
            "/api/v1/tasks", json={"task": "test.sleep", "params": {"seconds": 0}}
        )
        elapsed = time.monotonic() - started
    finally:
        server.signal(signal.SIGCONT)
    assert response.status_code == 503, response.json
    assert elapsed < 5
    assert response.headers["Retry-After"]
    # Redis now applies whatever the timed-out submit had sent: no record may appear,
    # and a message that lands late is dropped by the worker, never run.
    settle(0.5)
    store = server.client()
    assert store.zcard("errand:index") == 1
    assert store.keys("errand:task:*") and len(store.keys("errand:task:*")) == 1
    stack("worker", errand_env(server.url), tmp_path / "w.log", "hung")
    wait_for(lambda: queued(server) == 0 and not store.hlen("unacked"), 20)
    settle(1)
    assert store.keys("test:runs:*") == [f"test:runs:{warm}".encode()]
    assert store.keys("celery-task-meta-*") == [f"celery-task-meta-{warm}".encode()]


def test_worker_killed_mid_task_still_succeeds(stack: Any, tmp_path: Path) -> None:
    server = stack("redis")
    client = make_app(server.url).test_client()
    env = errand_env(server.url)
    first = stack("worker", env, tmp_path / "first.log", "first", concurrency=1)
    url = submit(client, "test.sleep", {"seconds": 3})
    wait_state(client, url, {"STARTED"})
    first.kill()  # kill -9 the whole worker: main process and child
    stack("worker", env, tmp_path / "second.log", "second", concurrency=1)
    task = wait_state(client, url, timeout=40)
    assert task["state"] == "SUCCESS"
    assert runs(server.client(), url) == 2  # at least once: the killed run, then this one


def test_live_worker_never_runs_a_job_twice(stack: Any, tmp_path: Path) -> None:
    # VISIBILITY_TIMEOUT is 4 s in the tests: both jobs outlast it three times over.
    server = stack("redis")
    client = make_app(server.url).test_client()
    env = errand_env(server.url)
    stack("worker", env, tmp_path / "a.log", "a", concurrency=2)
    stack("worker", env, tmp_path / "b.log", "b", concurrency=2)  # would take a redelivery
    long_job = submit(client, "test.sleep", {"seconds": 13})
    waiting = submit(client, "test.sleep", {"seconds": 0}, countdown=13)
    for url in (long_job, waiting):
        assert wait_state(client, url, timeout=40)["state"] == "SUCCESS"
    settle(5)  # a second delivery would show up here
    assert runs(server.client(), long_job) == 1
    assert runs(server.client(), waiting) == 1


def test_cancel_holds_across_worker_restart(stack: Any, tmp_path: Path) -> None:
    server = stack("redis")
    client = make_app(server.url).test_client()
    env = errand_env(server.url)
    first = stack("worker", env, tmp_path / "first.log", "first", concurrency=1)
    url = submit(client, "test.sleep", {"seconds": 0}, countdown=3)
    store = server.client()
    wait_for(lambda: store.hlen("unacked") == 1, 10)  # the worker holds it, waiting
    first.kill()
    assert client.delete(url).json["state"] == "REVOKED"  # no worker hears the broadcast
    stack("worker", env, tmp_path / "second.log", "second", concurrency=1)
    wait_for(lambda: queued(server) == 0 and store.hlen("unacked") == 0, 30)
    settle(1)
    task = client.get(url).json
    assert task["state"] == "REVOKED"
    assert task["started_at"] is None
    assert runs(store, url) == 0


def test_gunicorn_serves_the_contract(stack: Any, tmp_path: Path) -> None:
    server = stack("redis")
    with Api(errand_env(server.url), tmp_path / "g.log") as api:
        job = {"task": "test.echo", "params": {"value": 1}}
        status, headers, task = api.call("POST", "/api/v1/tasks", job)
        assert status == 202
        assert headers["Location"] == task["links"]["self"]
        assert api.call("GET", headers["Location"])[2]["state"] == "PENDING"
        status, headers, _ = api.call("GET", "/api/v1/tasks/nope")
        assert status == 404
        assert headers["Content-Type"] == "application/problem+json"
        assert api.call("POST", "/api/v1/tasks", None)[0] == 400  # empty body: not JSON
    log = (tmp_path / "g.log").read_text()
    assert '"POST /api/v1/tasks HTTP/1.1" 202' in log  # access log on stdout


def test_beat_runs_the_prune_job(stack: Any, tmp_path: Path) -> None:
    server = stack("redis")
    env = errand_env(server.url, PRUNE_INTERVAL="1")
    worker = stack("worker", env, tmp_path / "w.log", "pruner", concurrency=1)
    store = server.client()
    store.zadd("errand:index", {"long-gone": 1})
    beat_command = [str(BIN / "celery"), "-A", "worker:celery_app", "beat", "-l", "INFO"]
    stack("process", beat_command, tmp_path / "beat.log", env)
    wait_for(lambda: store.zscore("errand:index", "long-gone") is None, 30)
    assert b"errand.prune_index" in (tmp_path / "beat.log").read_bytes()
    wait_for(lambda: b"pruned 1 expired" in worker.log.read_bytes(), 10)  # logged after it


def test_sigterm_past_the_grace_returns_the_job(stack: Any, tmp_path: Path) -> None:
    server = stack("redis")
    client = make_app(server.url).test_client()
    env = errand_env(server.url, WORKER_SHUTDOWN_GRACE="2")
    first = stack("worker", env, tmp_path / "first.log", "first", concurrency=1)
    url = submit(client, "test.sleep", {"seconds": 20})
    wait_state(client, url, {"STARTED"})
    started = time.monotonic()
    first.signal(signal.SIGTERM)
    assert first.proc is not None
    first.proc.wait(15)
    assert time.monotonic() - started < 10  # the grace, not the job's 20 s
    stack("worker", errand_env(server.url), tmp_path / "second.log", "second", concurrency=1)
    task = wait_state(client, url, timeout=60)
    assert task["state"] == "SUCCESS"
    assert runs(server.client(), url) == 2


def test_result_store_down_while_a_task_finishes(stack: Any, tmp_path: Path) -> None:
    broker = stack("redis")
    results = stack("redis", aof=True)
    env = errand_env(results.url, CELERY_BROKER_URL=broker.url)
    stack("worker", env, tmp_path / "w.log", "results", concurrency=1)
    client = make_app(results.url, CELERY_BROKER_URL=broker.url).test_client()
    url = submit(client, "test.sleep", {"seconds": 2})
    wait_state(client, url, {"STARTED"})
    results.kill()
    settle(4)  # the task finishes meanwhile and cannot store its result
    assert client.get(url).status_code == 503
    results.start()
    task = wait_state(client, url, timeout=30)
    assert task["state"] == "SUCCESS"
    assert task["result"] == {"runs": 1}
    settle(2)
    assert runs(results.client(), url) == 1
